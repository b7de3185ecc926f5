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
   ``arg_labels`` not a map of lists of strings) makes every read of it an error.
   ``_fastdata.typed`` leaves such variables out, so that reading them errs here too.
2. One evaluation runs at most 9,999 comprehension steps in all; running out aborts it, and no
   ``false &&`` absorbs that. A comprehension here refuses (raises ``_fastcompile.OverBudget``, so
   the function answers ``None``) a range longer than ``_fastcompile.STEPS`` over the number of
   comprehensions in the condition. That bounds CEL's steps: CEL runs each comprehension at most
   once (none is inside another), and only those this code runs too, as ``&&`` and ``||`` are
   evaluated left to right here as there and stop here only on an answer that stops CEL's as well.

The caller must only use it on data that CEL can hold unchanged (see ``_fastdata.clean``):
exact ``dict``/``list``/``str``/``int``/``float``/``bool``/``None`` values and no NUL bytes. The
differential tests hold it to CEL on random policies and data.

This module holds the entry points (``simple`` for one condition, ``values_function`` for a rule
set); the work is split by stage: ``_fastdata`` (the data it accepts), ``_fastcompile`` (AST to
Python function), ``_fastlookup`` (paths) and ``_fastops`` (CEL's operators on Python values).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bastion.policy._celast import checked_expr
from bastion.policy._fastcompile import OverBudget, comparison, condition, fold_count
from bastion.policy._fastdata import typed
from bastion.policy._fastlookup import MISSING, path_getter
from bastion.policy._fastops import Fn

Values = Callable[[dict[str, Any]], tuple[int, ...] | None]


def simple(program: Any) -> Fn | None:
    """A Python function equal to ``program`` where it answers, or ``None`` if not in the subset."""
    fn = condition(program)
    if fn is None:
        return None

    def run(data: dict[str, Any]) -> bool | None:
        try:
            return fn(typed(data))
        except OverBudget:
            return None

    return run


def string_equality(program: Any) -> tuple[tuple[str, ...], str] | None:
    """``(path, literal)`` when ``program`` is exactly ``path == 'literal'``; rules of this form
    on one path are answered together with one dictionary look-up."""
    try:
        node = checked_expr(program)
    except (ValueError, KeyError, IndexError, StopIteration, UnicodeDecodeError):
        return None
    if node[0] != "call" or node[1] != "_==_":
        return None
    found = comparison("_==_", node[2], frozenset())
    if found is None or type(found[2]) is not str:
        return None
    path: tuple[str, ...] | None = getattr(found[1], "path", None)
    return None if path is None else (path, found[2])


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
        if not folds and fold_count(checked_expr(program)) > 0:
            return None
        fn = condition(program)
        if fn is None:
            return None
        others.append((i, fn))
    tables = [(path_getter(path), {k: tuple(v) for k, v in table.items()})
              for path, table in groups.items()]
    sort = len(tables) + len(others) > 1

    def values(view: dict[str, Any]) -> tuple[int, ...] | None:
        view = typed(view)
        trues: list[int] = []
        for get, table in tables:
            v = get(view)
            if type(v) is str:
                hits = table.get(v)
                if hits is not None:
                    trues.extend(hits)
            elif v is MISSING:
                return None
        try:
            for i, fn in others:
                r = fn(view)
                if r is None:
                    return None
                if r:
                    trues.append(i)
        except OverBudget:
            return None
        if sort:
            trues.sort()
        return tuple(trues)

    return values
