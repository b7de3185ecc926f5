"""The fast path's compiler: a condition's checked AST (``_celast``) to a Python function.

``condition(program)`` compiles the whole condition when it is in the subset ``_fastpath``
describes, else gives ``None``. The function it returns expects data that went through
``_fastdata.typed`` and answers ``True``, ``False`` or ``None`` (leave it to CEL), built from the
look-ups of ``_fastlookup`` and the operators of ``_fastops``.

It also keeps the binding's second rule (see ``_fastpath``): each ``exists``/``all`` refuses a
range longer than ``STEPS`` over the number of comprehensions in the condition by raising
``OverBudget``, which the caller turns into ``None``.
"""

from __future__ import annotations

from typing import Any

from bastion.policy._celast import UNSUPPORTED as _UNSUPPORTED
from bastion.policy._celast import checked_expr
from bastion.policy._fastlookup import MISSING, ROOTS, Getter, lookup, variable_name
from bastion.policy._fastops import (
    Fn,
    and_,
    boolean,
    contains,
    equals,
    in_literals,
    not_,
    or_,
    order,
)

STEPS = 5000  # comprehension steps one condition may take here; the binding allows 9,999
_CMP = {"_<_", "_<=_", "_>_", "_>=_"}
_FLIP = {"_<_": "_>_", "_<=_": "_>=_", "_>_": "_<_", "_>=_": "_<=_"}


class OverBudget(Exception):
    """A comprehension range too long to be sure CEL stays within its iteration budget."""


def condition(program: Any) -> Fn | None:
    """The compiled condition, for data that went through ``_fastdata.typed``; it may raise
    ``OverBudget``."""
    try:
        node = checked_expr(program)
        return _compile(node, frozenset(), STEPS // max(fold_count(node), 1))
    except (ValueError, KeyError, IndexError, StopIteration, UnicodeDecodeError):
        return None


def fold_count(node: Any) -> int:
    """How many comprehensions ``node`` holds."""
    if type(node) is list:
        return sum([fold_count(n) for n in node])
    if type(node) is not tuple:
        return 0
    return int(node[0] == "fold") + sum([fold_count(n) for n in node[1:]])


def comparison(fn: str, args: list[tuple[Any, ...]], bound: frozenset[str]
               ) -> tuple[str, Getter, Any] | None:
    """(operator, path getter, literal) for ``path OP literal`` or ``literal OP path``."""
    if len(args) != 2:
        return None
    left, right = args
    if left[0] == "const" and right[0] != "const":
        left, right, fn = right, left, _FLIP.get(fn, fn)
    getter = lookup(left, bound)
    if getter is None or right[0] != "const" or right[1] is _UNSUPPORTED:
        return None
    return fn, getter, right[1]


def _compile(node: tuple[Any, ...], bound: frozenset[str], steps: int) -> Fn | None:
    """``bound``: the iteration variables in scope; ``steps``: the longest range a comprehension
    may iterate over."""
    kind = node[0]
    if kind == "const" and type(node[1]) is bool:
        value = node[1]
        return lambda data: value
    if kind == "fold":
        return _fold(node, bound, steps)
    if kind == "select" and node[3]:  # has(path.field)
        parent_of = lookup(node[1], bound)
        if parent_of is None:
            return None
        key = node[2]

        def has(data: dict[str, Any]) -> bool | None:
            parent = parent_of(data)
            return None if type(parent) is not dict else key in parent

        return has
    if kind in ("ident", "select") or (kind == "call" and node[1] == "_[_]"):
        get = lookup(node, bound)
        return None if get is None else boolean(get, negate=False)
    if kind != "call":
        return None
    fn, args = node[1], node[2]
    if fn in ("_&&_", "_||_") and len(args) == 2:
        left, right = _compile(args[0], bound, steps), _compile(args[1], bound, steps)
        if left is None or right is None:
            return None
        return and_(left, right) if fn == "_&&_" else or_(left, right)
    if fn == "!_":
        operand = lookup(args[0], bound)
        if operand is not None:
            return boolean(operand, negate=True)
        inner = _compile(args[0], bound, steps)
        return None if inner is None else not_(inner)
    if fn == "@in" and len(args) == 2:
        return _membership(args[0], args[1], bound)
    if fn in ("_==_", "_!=_") or fn in _CMP:
        found = comparison(fn, args, bound)
        if found is None:
            return None
        fn, getter, const = found
        if fn == "_==_":
            return equals(getter, const)
        if fn == "_!=_":
            return not_(equals(getter, const))
        if type(const) not in (str, int, float):
            return None
        op = fn
        return lambda data: order(getter(data), const, op)
    return None


def _fold(node: tuple[Any, ...], bound: frozenset[str], steps: int) -> Fn | None:
    """``range.exists(v, p)`` or ``range.all(v, p)``, recognised by the exact expansion CEL's
    parser gives those macros; any other comprehension is not in the subset."""
    _, var, range_node, accu, init, loop_condition, step, result = node
    acc = ("ident", accu)
    if (bound or var == accu or accu in ROOTS or result != acc or step[0] != "call"
            or len(step[2]) != 2 or step[2][0] != acc
            or init[0] != "const" or type(init[1]) is not bool):
        return None
    wanted: tuple[tuple[Any, ...], str]
    if init[1] is False:  # exists: false, then `@result || p` while `!@result` is not false
        decisive = True
        wanted = ("call", "@not_strictly_false", [("call", "!_", [acc])]), "_||_"
    else:  # all: true, then `@result && p` while `@result` is not false
        decisive = False
        wanted = ("call", "@not_strictly_false", [acc]), "_&&_"
    if (loop_condition, step[1]) != wanted:
        return None
    items_of = lookup(range_node, bound)
    pred = _compile(step[2][1], frozenset({var}), steps)
    if items_of is None or pred is None:
        return None

    def fold(data: dict[str, Any]) -> bool | None:
        items = items_of(data)
        if type(items) is not list and type(items) is not dict:
            return None
        if len(items) > steps:
            raise OverBudget
        scope = dict(data)
        unknown = False
        for item in items:  # a map's keys
            scope[var] = item
            r = pred(scope)
            if r is decisive:
                return decisive
            unknown |= r is None
        return None if unknown else not decisive

    return fold


def _membership(needle_node: tuple[Any, ...], haystack_node: tuple[Any, ...],
                bound: frozenset[str]) -> Fn | None:
    """``x in [literals]``; or ``x in path`` for a string ``x``, a literal or a path."""
    if haystack_node[0] == "list":
        member = lookup(needle_node, bound)
        items = [e[1] for e in haystack_node[1] if e[0] == "const"]
        if member is None or len(items) != len(haystack_node[1]) or _UNSUPPORTED in items:
            return None
        return lambda data: in_literals(member(data), items)
    haystack = lookup(haystack_node, bound)
    if haystack is None:
        return None
    if needle_node[0] == "const":
        literal = needle_node[1]
        return None if type(literal) is not str else lambda data: contains(haystack(data),
                                                                            literal)
    name = variable_name(needle_node, bound)
    if name is not None:
        return lambda data: contains(haystack(data), data.get(name, MISSING))
    needle = lookup(needle_node, bound)
    if needle is None:
        return None
    return lambda data: contains(haystack(data), needle(data))
