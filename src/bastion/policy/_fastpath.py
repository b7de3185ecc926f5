"""A fast path for conditions, compiled from CEL's own checked AST.

CEL stays the authority. ``simple(program)`` reads the program's checked expression (the
serialized ``cel.expr.CheckedExpr`` the binding produces) and, when the whole condition is in a
small subset, returns a Python function that gives the same answer as CEL for every input it
answers: ``True`` or ``False``. Whenever CEL could err, the answer depends on a numeric conversion
or CEL could run out of its iteration budget, it returns ``None`` and the caller runs CEL. The
subset:

* paths: a variable (``tool``, ``args``, ``context``, ``agent``, ``session``, ``result``,
  ``tool_info``, ``arg_labels``), or inside a macro its iteration variable, then any number of
  ``.field`` steps and indexes by a string (``m["a"]``, ``m[k]``), each a map look-up;
* literals: strings, integers, doubles, booleans, null;
* ``==`` and ``!=`` (CEL's heterogeneous equality: values of different kinds are unequal),
  ``<``, ``<=``, ``>``, ``>=`` between a path and a literal of the same kind, ``x in [literals]``,
  ``has(path)``;
* a path as a condition (``tool_info.side_effects``): an answer only when it holds a bool;
* ``x in path`` for a string ``x`` (a literal or a path): membership in a list of strings only,
  or among a map's keys;
* the macros ``path.exists(v, p)`` and ``path.all(v, p)`` over a list or a map's keys, ``p`` in
  the subset with ``v`` bound, one comprehension never inside another;
* ``&&``, ``||``, ``!`` with CEL's rule that ``false && error`` is false and ``true || error`` is
  true; likewise ``exists`` is true when ``p`` is true for any element, whatever it gives for the
  others, and ``all`` is false when ``p`` is false for any.

Two rules of the binding the subset keeps (found by experiment; the tests hold them):

1. A variable is converted to its declared type (``bastion.policy._cel.VARIABLES``) when it is
   first read, and a value that does not fit (``tool`` not a string, a map variable not a map,
   ``arg_labels`` not a map of lists of strings) makes every read of it an error. ``_typed``
   leaves such variables out, so that reading them errs here too.
2. One evaluation runs at most 9,999 comprehension steps in all; running out aborts it, and no
   ``false &&`` absorbs that. A comprehension here refuses (raises ``_OverBudget``, so the
   function answers ``None``) a range longer than ``_STEPS`` over the number of comprehensions
   in the condition. That bounds CEL's steps: CEL runs each comprehension at most once (none
   is inside another), and only those this code runs too, as ``&&`` and ``||`` are evaluated
   left to right here as there and stop here only on an answer that stops CEL's as well.

The caller must only use it on data that CEL can hold unchanged (see ``clean``): exact
``dict``/``list``/``str``/``int``/``float``/``bool``/``None`` values and no NUL bytes. The
differential tests hold it to CEL on random policies and data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bastion.policy._celast import UNSUPPORTED as _UNSUPPORTED
from bastion.policy._celast import checked_expr

Fn = Callable[[dict[str, Any]], bool | None]
Getter = Callable[[dict[str, Any]], Any]
_INT64 = (-(2**63), 2**63 - 1)
_CMP = {"_<_", "_<=_", "_>_", "_>=_"}
_FLIP = {"_<_": "_>_", "_<=_": "_>=_", "_>_": "_<_", "_>=_": "_<=_"}
_ROOTS = {"tool", "args", "context", "agent", "session", "result", "tool_info", "arg_labels"}
_STEPS = 5000  # comprehension steps one condition may take here; the binding allows 9,999


# -- compilation to Python ------------------------------------------------------------------------
class _OverBudget(Exception):
    """A comprehension range too long to be sure CEL stays within its iteration budget."""


def simple(program: Any) -> Fn | None:
    """A Python function equal to ``program`` where it answers, or ``None`` if not in the subset."""
    fn = _condition(program)
    if fn is None:
        return None

    def run(data: dict[str, Any]) -> bool | None:
        try:
            return fn(_typed(data))
        except _OverBudget:
            return None

    return run


def _condition(program: Any) -> Fn | None:
    """The compiled condition, for data that went through ``_typed``; it may raise
    ``_OverBudget``."""
    try:
        node = checked_expr(program)
        return _compile(node, frozenset(), _STEPS // max(_folds(node), 1))
    except (ValueError, KeyError, IndexError, StopIteration, UnicodeDecodeError):
        return None


def _folds(node: Any) -> int:
    """How many comprehensions ``node`` holds."""
    if type(node) is list:
        return sum([_folds(n) for n in node])
    if type(node) is not tuple:
        return 0
    return int(node[0] == "fold") + sum([_folds(n) for n in node[1:]])


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
        parent_of = _value(node[1], bound)
        if parent_of is None:
            return None
        key = node[2]

        def has(data: dict[str, Any]) -> bool | None:
            parent = parent_of(data)
            return None if type(parent) is not dict else key in parent

        return has
    if kind in ("ident", "select") or (kind == "call" and node[1] == "_[_]"):
        get = _value(node, bound)
        return None if get is None else _boolean(get, negate=False)
    if kind != "call":
        return None
    fn, args = node[1], node[2]
    if fn in ("_&&_", "_||_") and len(args) == 2:
        left, right = _compile(args[0], bound, steps), _compile(args[1], bound, steps)
        if left is None or right is None:
            return None
        return _and(left, right) if fn == "_&&_" else _or(left, right)
    if fn == "!_":
        operand = _value(args[0], bound)
        if operand is not None:
            return _boolean(operand, negate=True)
        inner = _compile(args[0], bound, steps)
        if inner is None:
            return None
        return lambda data: None if (v := inner(data)) is None else not v
    if fn == "@in" and len(args) == 2:
        return _membership(args[0], args[1], bound)
    if fn in ("_==_", "_!=_") or fn in _CMP:
        found = _comparison(fn, args, bound)
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


def _boolean(get: Getter, *, negate: bool) -> Fn:
    """A path used as a condition (or negated): only a bool is an answer."""
    return lambda data: v != negate if type(v := get(data)) is bool else None  # not v if negated


def _fold(node: tuple[Any, ...], bound: frozenset[str], steps: int) -> Fn | None:
    """``range.exists(v, p)`` or ``range.all(v, p)``, recognised by the exact expansion CEL's
    parser gives those macros; any other comprehension is not in the subset."""
    _, var, range_node, accu, init, condition, step, result = node
    acc = ("ident", accu)
    if (bound or var == accu or accu in _ROOTS or result != acc or step[0] != "call"
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
    if (condition, step[1]) != wanted:
        return None
    items_of = _value(range_node, bound)
    pred = _compile(step[2][1], frozenset({var}), steps)
    if items_of is None or pred is None:
        return None

    def fold(data: dict[str, Any]) -> bool | None:
        items = items_of(data)
        if type(items) is not list and type(items) is not dict:
            return None
        if len(items) > steps:
            raise _OverBudget
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


def _has_fold(node: Any) -> bool:
    if isinstance(node, tuple):
        return (bool(node) and node[0] == "fold") or any(_has_fold(x) for x in node[1:])
    if isinstance(node, list):
        return any(_has_fold(x) for x in node)
    return False


def _membership(needle_node: tuple[Any, ...], haystack_node: tuple[Any, ...],
                bound: frozenset[str]) -> Fn | None:
    """``x in [literals]``; or ``x in path`` for a string ``x``, a literal or a path."""
    if haystack_node[0] == "list":
        member = _value(needle_node, bound)
        items = [e[1] for e in haystack_node[1] if e[0] == "const"]
        if member is None or len(items) != len(haystack_node[1]) or _UNSUPPORTED in items:
            return None
        return lambda data: _in(member(data), items)
    haystack = _value(haystack_node, bound)
    if haystack is None:
        return None
    if needle_node[0] == "const":
        literal = needle_node[1]
        return None if type(literal) is not str else lambda data: _contains(haystack(data),
                                                                             literal)
    name = _name(needle_node, bound)
    if name is not None:
        return lambda data: _contains(haystack(data), data.get(name, _MISSING))
    needle = _value(needle_node, bound)
    if needle is None:
        return None
    return lambda data: _contains(haystack(data), needle(data))


def _comparison(fn: str, args: list[tuple[Any, ...]], bound: frozenset[str]
                ) -> tuple[str, Getter, Any] | None:
    """(operator, path getter, literal) for ``path OP literal`` or ``literal OP path``."""
    if len(args) != 2:
        return None
    left, right = args
    if left[0] == "const" and right[0] != "const":
        left, right, fn = right, left, _FLIP.get(fn, fn)
    getter = _value(left, bound)
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
    found = _comparison("_==_", node[2], frozenset())
    if found is None or type(found[2]) is not str:
        return None
    path: tuple[str, ...] | None = getattr(found[1], "path", None)
    return None if path is None else (path, found[2])


_MISSING = object()


def path_getter(path: tuple[str, ...]) -> Getter:
    """The getter of ``_path`` for a path given as names (``("args", "to")``)."""
    node: tuple[Any, ...] = ("ident", path[0])
    for step in path[1:]:
        node = ("select", node, step, False)
    getter = _path(node, frozenset())
    assert getter is not None
    return getter


Values = Callable[[dict[str, Any]], tuple[int, ...] | None]


def values_function(programs: list[Any], *, folds: bool = False) -> Values | None:
    """One function giving the positions of the programs that are true on clean data, or
    ``None`` when not every program is in the subset.

    Conditions ``path == 'literal'`` on one path are grouped into a table from literal to
    positions, so fifty rules on ``args.to`` cost one look-up; the function returns ``None``
    where CEL would err or convert, and the caller then runs CEL.

    Without ``folds``, a set holding an ``exists``/``all`` macro is left to CEL: the closures
    here answer the flow pack correctly but 2-5 µs slower than CEL's own interpreter
    (``bench_flow.py``, pre_tool after 0 results: 33-36 µs against 30-31 µs).
    """
    groups: dict[tuple[str, ...], dict[str, list[int]]] = {}
    others: list[tuple[int, Fn]] = []
    for i, program in enumerate(programs):
        eq = string_equality(program)
        if eq is not None:
            groups.setdefault(eq[0], {}).setdefault(eq[1], []).append(i)
            continue
        if not folds and _has_fold(checked_expr(program)):
            return None
        fn = _condition(program)
        if fn is None:
            return None
        others.append((i, fn))
    tables = [(path_getter(path), {k: tuple(v) for k, v in table.items()})
              for path, table in groups.items()]
    sort = len(tables) + len(others) > 1

    def values(view: dict[str, Any]) -> tuple[int, ...] | None:
        view = _typed(view)
        trues: list[int] = []
        for get, table in tables:
            v = get(view)
            if type(v) is str:
                hits = table.get(v)
                if hits is not None:
                    trues.extend(hits)
            elif v is _MISSING:
                return None
        try:
            for i, fn in others:
                r = fn(view)
                if r is None:
                    return None
                if r:
                    trues.append(i)
        except _OverBudget:
            return None
        if sort:
            trues.sort()
        return tuple(trues)

    return values


def _value(node: tuple[Any, ...], bound: frozenset[str]) -> Getter | None:
    """A getter for a path: a variable, then ``.field`` steps and indexes ``[key]`` by a string
    (a literal or a path); it returns ``_MISSING`` where CEL would err."""
    getter = _path(node, bound)
    if getter is not None:
        return getter
    if node[0] == "select" and not node[3]:
        parent_of, key = _value(node[1], bound), node[2]
        if parent_of is None:
            return None
        return lambda data: (p.get(key, _MISSING) if type(p := parent_of(data)) is dict
                             else _MISSING)
    if node[0] == "call" and node[1] == "_[_]" and len(node[2]) == 2:
        return _index(node[2][0], node[2][1], bound)
    return None


def _index(container_node: tuple[Any, ...], key_node: tuple[Any, ...], bound: frozenset[str]
           ) -> Getter | None:
    """``m[k]`` for a map ``m`` and a string ``k``; the common ``variable[iteration variable]``
    in one step."""
    m_name, k_name = _name(container_node, bound), _name(key_node, bound)
    if m_name is not None and k_name is not None:
        def by_names(data: dict[str, Any]) -> Any:
            m, k = data.get(m_name), data.get(k_name)
            return m.get(k, _MISSING) if type(m) is dict and type(k) is str else _MISSING

        return by_names
    container = _value(container_node, bound)
    key_of: Getter | None
    if key_node[0] == "const":
        key = key_node[1]
        key_of = None if type(key) is not str else lambda data: key
    else:
        key_of = _value(key_node, bound)
    if container is None or key_of is None:
        return None

    def index(data: dict[str, Any]) -> Any:
        m, k = container(data), key_of(data)
        return m.get(k, _MISSING) if type(m) is dict and type(k) is str else _MISSING

    return index


def _name(node: tuple[Any, ...], bound: frozenset[str]) -> str | None:
    """The name, when ``node`` is a variable or a bound iteration variable on its own."""
    if node[0] == "ident" and (node[1] in _ROOTS or node[1] in bound):
        return str(node[1])
    return None


def _path(node: tuple[Any, ...], bound: frozenset[str]) -> Getter | None:
    """A getter for ``root.a.b`` (``root`` a variable or a bound iteration variable); it returns
    ``_MISSING`` where CEL would err."""
    steps: list[str] = []
    while node[0] == "select" and not node[3]:
        steps.append(node[2])
        node = node[1]
    if node[0] != "ident" or (node[1] not in _ROOTS and node[1] not in bound):
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


def _typed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the variables CEL cannot convert to their declared types: CEL errs on
    every read of such a variable, as the compiled functions do on an absent one."""
    for name, value in data.items():
        if not _fits(name, value):
            return {k: v for k, v in data.items() if _fits(k, v)}
    return data


def _fits(name: str, value: Any) -> bool:
    kind = _DECLARED.get(name)
    return kind is None or (type(value) is kind
                            and (name != "arg_labels" or _is_labels(value)))


def _is_labels(value: Any) -> bool:
    """Whether ``value`` is a ``map(string, list(string))`` (keys are strings in clean data)."""
    if type(value) is not dict:
        return False
    for labels in value.values():
        if type(labels) is not list:
            return False
        for label in labels:
            if type(label) is not str:
                return False
    return True


# The declared types of ``bastion.policy._cel.VARIABLES`` that can reject a clean value:
# ``tool`` a string, the maps maps, ``arg_labels`` a map of lists of strings (``result`` is dyn).
_DECLARED: dict[str, type] = {
    "tool": str, "args": dict, "agent": dict, "session": dict, "context": dict,
    "tool_info": dict, "arg_labels": dict,
}


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


def _contains(haystack: Any, needle: Any) -> bool | None:
    """CEL's ``needle in haystack`` for a string needle: among a map's keys (strings in clean
    data), or in a list of strings only (other elements would need heterogeneous equality)."""
    if type(needle) is not str:
        return None
    kind = type(haystack)
    if kind is dict:
        return needle in haystack
    if kind is not list:
        return None
    for item in haystack:
        if type(item) is not str:
            return None
    return needle in haystack


def _and(left: Fn, right: Fn) -> Fn:
    def run(data: dict[str, Any]) -> bool | None:
        a = left(data)
        if a is False:
            return False
        b = right(data)
        if b is False:
            return False
        return a and b  # True, or None when either is unknown

    return run


def _or(left: Fn, right: Fn) -> Fn:
    def run(data: dict[str, Any]) -> bool | None:
        a = left(data)
        if a is True:
            return True
        b = right(data)
        if b is True:
            return True
        return None if a is None else b  # False, or None when either is unknown

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
        for k in value:
            if type(k) is not str or "\x00" in k:
                return False
        return _clean_items(value.values(), depth)
    if t is list:
        return depth <= 64 and _clean_items(value, depth)
    if t is int:
        return bool(_INT64[0] <= value <= _INT64[1])
    return t is float or t is bool or value is None


def _clean_items(values: Any, depth: int) -> bool:
    """``clean`` for the values of a map or the elements of a list at ``depth``."""
    for v in values:
        tv = type(v)
        if tv is str:
            if "\x00" in v:
                return False
        elif tv is int:
            if not _INT64[0] <= v <= _INT64[1]:
                return False
        elif tv is list:
            if depth >= 64 or not _clean_items(v, depth + 1):
                return False
        elif not (tv is float or tv is bool or v is None or clean(v, depth + 1)):
            return False
    return True
