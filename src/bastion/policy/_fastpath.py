"""A fast path for simple conditions, compiled from CEL's own checked AST.

CEL stays the authority. ``simple(program)`` reads the program's checked expression (the
serialized ``cel.expr.CheckedExpr`` the binding produces) and, when the whole condition is in a
small subset, returns a Python function that gives the same answer as CEL for every input it
answers: ``True`` or ``False``. Whenever CEL could err or the answer depends on a numeric
conversion, it returns ``None`` and the caller runs CEL. The subset:

* paths: ``tool``; ``args.a``, ``args.a.b`` (and under ``context``, ``agent``, ``session``,
  ``result``), each step a map lookup;
* literals: strings, integers, doubles, booleans, null;
* ``==`` and ``!=`` (CEL's heterogeneous equality: values of different kinds are unequal),
  ``<``, ``<=``, ``>``, ``>=`` between a path and a literal of the same kind, ``x in [literals]``,
  ``has(path)``, and ``&&``, ``||``, ``!`` with CEL's rule that ``false && error`` is false and
  ``true || error`` is true.

The caller must only use it on data that CEL can hold unchanged (see ``clean``): exact
``dict``/``list``/``str``/``int``/``float``/``bool``/``None`` values and no NUL bytes. The
differential tests hold it to CEL on random policies and data.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

Fn = Callable[[dict[str, Any]], bool | None]
_INT64 = (-(2**63), 2**63 - 1)
_CMP = {"_<_", "_<=_", "_>_", "_>=_"}
_FLIP = {"_<_": "_>_", "_<=_": "_>=_", "_>_": "_<_", "_>=_": "_<=_"}
_ROOTS = {"tool", "args", "context", "agent", "session", "result", "tool_info", "arg_labels"}


# -- protobuf wire decoding (only what a CheckedExpr needs) --------------------------------------
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


def _expr(buf: bytes) -> tuple[Any, ...]:
    """An Expr as a tuple: ("ident", name) | ("select", operand, field, test_only) |
    ("call", function, args) | ("list", elements) | ("const", value) | ("other",)."""
    for field, _, value in _fields(buf):
        if field == 3:
            return ("const", _const(value))
        if field == 4:
            return ("ident", _str(value, 1))
        if field == 5:
            parts = {f: v for f, _, v in _fields(value)}
            return ("select", _expr(parts.get(1, b"")), parts[2].decode(), bool(parts.get(3, 0)))
        if field == 6:
            fs = _fields(value)
            if any(f == 1 for f, _, _ in fs):  # a member call (target.fn()): not in the subset
                return ("other",)
            fn = next(v for f, _, v in fs if f == 2).decode()
            return ("call", fn, [_expr(v) for f, _, v in fs if f == 3])
        if field == 7:
            return ("list", [_expr(v) for f, _, v in _fields(value) if f == 1])
        if field in (8, 9):
            return ("other",)
    return ("other",)


_UNSUPPORTED = object()


def _const(buf: bytes) -> Any:
    for field, _, value in _fields(buf):
        if field == 1:
            return None
        if field == 2:
            return bool(value)
        if field == 3:
            return value - (1 << 64) if value >= 1 << 63 else value
        if field == 4:
            return _UNSUPPORTED  # uint literals: leave to CEL
        if field == 5:
            return struct.unpack("<d", value)[0]
        if field == 6:
            return value.decode()
    return _UNSUPPORTED


def _str(buf: bytes, want: int) -> str:
    for field, _, value in _fields(buf):
        if field == want:
            return bytes(value).decode()
    return ""


def checked_expr(program: Any) -> tuple[Any, ...]:
    """The root Expr of a compiled program, from its serialized CheckedExpr (in an ``Any``)."""
    outer = {f: v for f, _, v in _fields(program.serialize())}
    checked = {f: v for f, _, v in _fields(outer[2])}
    return _expr(checked[4])


# -- compilation to Python ------------------------------------------------------------------------
def simple(program: Any) -> Fn | None:
    """A Python function equal to ``program`` where it answers, or ``None`` if not in the subset."""
    try:
        return _compile(checked_expr(program))
    except (ValueError, KeyError, IndexError, StopIteration, UnicodeDecodeError):
        return None


def _compile(node: tuple[Any, ...]) -> Fn | None:
    kind = node[0]
    if kind == "const" and type(node[1]) is bool:
        value = node[1]
        return lambda data: value
    if kind == "select" and node[3]:  # has(path.field)
        parent_of = _path(node[1])
        if parent_of is None:
            return None
        key = node[2]

        def has(data: dict[str, Any]) -> bool | None:
            parent = parent_of(data)
            return None if type(parent) is not dict else key in parent

        return has
    if kind != "call":
        return None
    fn, args = node[1], node[2]
    if fn in ("_&&_", "_||_"):
        parts = [_compile(a) for a in args]
        if any(p is None for p in parts):
            return None
        return _and(parts) if fn == "_&&_" else _or(parts)  # type: ignore[arg-type]
    if fn == "!_":
        inner = _compile(args[0])
        if inner is None:
            return None
        return lambda data: None if (v := inner(data)) is None else not v
    if fn == "@in" and len(args) == 2 and args[1][0] == "list":
        member = _path(args[0])
        items = [e[1] for e in args[1][1] if e[0] == "const"]
        if member is None or len(items) != len(args[1][1]) or _UNSUPPORTED in items:
            return None
        return lambda data: _in(member(data), items)
    if fn in ("_==_", "_!=_") or fn in _CMP:
        found = _comparison(fn, args)
        if found is None:
            return None
        fn, getter, const = found
        if fn == "_==_":
            return _equals(getter, const)
        if fn == "_!=_":
            eq = _equals(getter, const)
            return lambda data: None if (v := eq(data)) is None else not v
        if type(const) not in (str, int, float):
            return None
        op = fn
        return lambda data: _order(getter(data), const, op)
    return None


def _comparison(fn: str, args: list[tuple[Any, ...]]
                ) -> tuple[str, Callable[[dict[str, Any]], Any], Any] | None:
    """(operator, path getter, literal) for ``path OP literal`` or ``literal OP path``."""
    if len(args) != 2:
        return None
    left, right = args
    if left[0] == "const" and right[0] != "const":
        left, right, fn = right, left, _FLIP.get(fn, fn)
    getter = _path(left)
    if getter is None or right[0] != "const" or right[1] is _UNSUPPORTED:
        return None
    return fn, getter, right[1]


def string_equality(program: Any) -> tuple[tuple[str, ...], str] | None:
    """``(path, literal)`` when ``program`` is exactly ``path == 'literal'``; rules of this form
    on one path are answered together with one dictionary look-up."""
    try:
        node = checked_expr(program)
    except (ValueError, KeyError, IndexError, StopIteration, UnicodeDecodeError):
        return None
    if node[0] != "call" or node[1] != "_==_":
        return None
    found = _comparison("_==_", node[2])
    if found is None or type(found[2]) is not str:
        return None
    path: tuple[str, ...] = getattr(found[1], "path")  # noqa: B009
    return path, found[2]


_MISSING = object()


def path_getter(path: tuple[str, ...]) -> Callable[[dict[str, Any]], Any]:
    """The getter of ``_path`` for a path given as names (``("args", "to")``)."""
    node: tuple[Any, ...] = ("ident", path[0])
    for step in path[1:]:
        node = ("select", node, step, False)
    getter = _path(node)
    assert getter is not None
    return getter


Values = Callable[[dict[str, Any]], tuple[int, ...] | None]


def values_function(programs: list[Any]) -> Values | None:
    """One function giving the positions of the programs that are true on clean data, or
    ``None`` when not every program is in the subset.

    Conditions ``path == 'literal'`` on one path are grouped into a table from literal to
    positions, so fifty rules on ``args.to`` cost one look-up; the function returns ``None``
    where CEL would err or convert, and the caller then runs CEL.
    """
    groups: dict[tuple[str, ...], dict[str, list[int]]] = {}
    others: list[tuple[int, Fn]] = []
    for i, program in enumerate(programs):
        eq = string_equality(program)
        if eq is not None:
            groups.setdefault(eq[0], {}).setdefault(eq[1], []).append(i)
            continue
        fn = simple(program)
        if fn is None:
            return None
        others.append((i, fn))
    tables = [(path_getter(path), {k: tuple(v) for k, v in table.items()})
              for path, table in groups.items()]
    sort = len(tables) + len(others) > 1

    def values(view: dict[str, Any]) -> tuple[int, ...] | None:
        trues: list[int] = []
        for get, table in tables:
            v = get(view)
            if type(v) is str:
                hits = table.get(v)
                if hits is not None:
                    trues.extend(hits)
            elif v is _MISSING:
                return None
        for i, fn in others:
            r = fn(view)
            if r is None:
                return None
            if r:
                trues.append(i)
        if sort:
            trues.sort()
        return tuple(trues)

    return values


def _path(node: tuple[Any, ...]) -> Callable[[dict[str, Any]], Any] | None:
    """A getter for ``root.a.b``; it returns ``_MISSING`` where CEL would err."""
    steps: list[str] = []
    while node[0] == "select" and not node[3]:
        steps.append(node[2])
        node = node[1]
    if node[0] != "ident" or node[1] not in _ROOTS:
        return None
    root = node[1]
    steps.reverse()
    if len(steps) == 1:
        key = steps[0]

        def get1(data: dict[str, Any]) -> Any:
            parent = data.get(root)
            return parent.get(key, _MISSING) if type(parent) is dict else _MISSING

        get1.path = (root, key)  # type: ignore[attr-defined]
        return get1

    def get(data: dict[str, Any]) -> Any:
        value = data.get(root, _MISSING)
        for step in steps:
            if type(value) is not dict or step not in value:
                return _MISSING
            value = value[step]
        return value

    get.path = (root, *steps)  # type: ignore[attr-defined]
    return get


def _equals(getter: Callable[[dict[str, Any]], Any], const: Any) -> Fn:
    """``path == const`` on clean data, specialised by the literal's kind."""
    kind = type(const)
    if kind is str or kind is bool:
        def eq_same(data: dict[str, Any]) -> bool | None:
            v = getter(data)
            if type(v) is kind:
                return bool(v == const)
            return None if v is _MISSING else False

        return eq_same
    if const is None:
        return lambda data: None if (v := getter(data)) is _MISSING else v is None
    other = float if kind is int else int  # int against double: a conversion; leave it to CEL

    def eq_number(data: dict[str, Any]) -> bool | None:
        v = getter(data)
        t = type(v)
        if t is kind:
            return bool(v == const)
        return None if v is _MISSING or t is other else False

    return eq_number


def _order(value: Any, const: Any, op: str) -> bool | None:
    if value is _MISSING or type(value) is not type(const):
        return None
    if op == "_<_":
        return bool(value < const)
    if op == "_<=_":
        return bool(value <= const)
    if op == "_>_":
        return bool(value > const)
    return bool(value >= const)


def _in(value: Any, items: list[Any]) -> bool | None:
    if value is _MISSING:
        return None
    unknown = False
    t = type(value)
    for item in items:
        ti = type(item)
        if ti is t:
            if value == item:
                return True
        elif {t, ti} == {int, float}:
            unknown = True
    return None if unknown else False


def _and(parts: list[Fn]) -> Fn:
    def run(data: dict[str, Any]) -> bool | None:
        unknown = False
        for p in parts:
            r = p(data)
            if r is False:
                return False
            unknown |= r is None
        return None if unknown else True

    return run


def _or(parts: list[Fn]) -> Fn:
    def run(data: dict[str, Any]) -> bool | None:
        unknown = False
        for p in parts:
            r = p(data)
            if r is True:
                return True
            unknown |= r is None
        return None if unknown else False

    return run


def clean(value: Any, depth: int = 0) -> bool:
    """Whether CEL holds ``value`` unchanged: exact dict (string keys), list, str, int within
    64 bits, float, bool and None, no NUL byte in any string, at most 64 levels deep."""
    t = type(value)
    if t is str:
        return "\x00" not in value
    if t is dict:
        if depth > 64:
            return False
        for k, v in value.items():
            if type(k) is not str or "\x00" in k:
                return False
            tv = type(v)
            if tv is str:
                if "\x00" in v:
                    return False
            elif tv is int:
                if not _INT64[0] <= v <= _INT64[1]:
                    return False
            elif not (tv is float or tv is bool or v is None or clean(v, depth + 1)):
                return False
        return True
    if t is list:
        return depth <= 64 and all([clean(v, depth + 1) for v in value])
    if t is int:
        return bool(_INT64[0] <= value <= _INT64[1])
    return t is float or t is bool or value is None
