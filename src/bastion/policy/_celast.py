"""The checked AST of a compiled CEL program, read from its serialized ``CheckedExpr``.

The binding (``cel-expr-python``) exposes a compiled program only as bytes: a protobuf ``Any``
holding a ``cel.expr.CheckedExpr``. This module decodes the part of the wire format an ``Expr``
needs and turns each node into a tuple the fast path compiles (``_fastcompile``):
``("ident", name)``, ``("select", operand, field, test_only)``, ``("call", function, args)``,
``("list", elements)``, ``("const", value)``, ``("fold", ...)`` (a comprehension) or
``("other",)``.
Field numbers follow ``cel/expr/syntax.proto``.
"""

from __future__ import annotations

import struct
from typing import Any


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    out: list[tuple[int, int, Any]] = []
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((field, wire, value))
    return out


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _expr(buf: bytes, members: bool = False) -> tuple[Any, ...]:
    """An Expr as a tuple: ("ident", name) | ("select", operand, field, test_only) |
    ("call", function, args) | ("list", elements) | ("const", value) |
    ("fold", iter_var, iter_range, accu_var, accu_init, loop_condition, loop_step, result) |
    ("other",)."""
    for field, _, value in _fields(buf):
        if field == 3:
            return ("const", _const(value))
        if field == 4:
            return ("ident", _str(value, 1))
        if field == 5:
            parts = {f: v for f, _, v in _fields(value)}
            return ("select", _expr(parts.get(1, b""), members), parts[2].decode(),
                    bool(parts.get(3, 0)))
        if field == 6:
            fs = _fields(value)
            fn = next(v for f, _, v in fs if f == 2).decode()
            if any(f == 1 for f, _, _ in fs):  # a member call (target.fn()): not in the subset
                if not members:
                    return ("other",)
                return ("member", fn, [_expr(v, members) for f, _, v in fs if f in (1, 3)])
            return ("call", fn, [_expr(v, members) for f, _, v in fs if f == 3])
        if field == 7:
            return ("list", [_expr(v, members) for f, _, v in _fields(value) if f == 1])
        if field == 9:  # a Comprehension (the expansion of a macro)
            parts = {f: v for f, _, v in _fields(value)}
            if parts.get(8) and not members:  # a second iteration variable: two-variable macros
                return ("other",)
            return ("fold", bytes(parts[1]).decode(), _expr(parts[2], members),
                    bytes(parts[3]).decode(),
                    *[_expr(parts.get(f, b""), members) for f in (4, 5, 6, 7)])
        if field == 8 and members:  # a map or message literal: its keys and values
            return ("struct", [_expr(v, members) for f, _, entry in _fields(value) if f == 2
                               for f2, _, v in _fields(entry) if f2 in (3, 4)])
        if field == 8:
            return ("other",)
    return ("other",)


UNSUPPORTED = object()  # a literal the fast path leaves to CEL (uint)


def _const(buf: bytes) -> Any:
    for field, _, value in _fields(buf):
        if field == 1:
            return None
        if field == 2:
            return bool(value)
        if field == 3:
            return value - (1 << 64) if value >= 1 << 63 else value
        if field == 4:
            return UNSUPPORTED  # uint literals: leave to CEL
        if field == 5:
            return struct.unpack("<d", value)[0]
        if field == 6:
            return value.decode()
    return UNSUPPORTED


def _str(buf: bytes, want: int) -> str:
    for field, _, value in _fields(buf):
        if field == want:
            return bytes(value).decode()
    return ""


def checked_expr(program: Any, *, members: bool = False) -> tuple[Any, ...]:
    """The root Expr of a compiled program, from its serialized CheckedExpr (in an ``Any``).
    With ``members``, also what lies outside the evaluated subset: member calls as
    ``("member", function, [target, *args])``, map and message literals as
    ``("struct", [key, value, ...])`` and two-variable macros as folds (for reading which
    variables a program touches, not for evaluating it)."""
    outer = {f: v for f, _, v in _fields(program.serialize())}
    checked = {f: v for f, _, v in _fields(outer[2])}
    return _expr(checked[4], members)
