"""CEL's operators on clean Python values, for the conditions the fast path compiles.

Each function gives CEL's answer, ``True`` or ``False``, or ``None`` wherever CEL would err or
its answer would depend on a numeric conversion (an int against a double); a getter's ``MISSING``
(``_fastlookup``) is such an error. ``and_`` and ``or_`` keep CEL's rule that ``false && error``
is false and ``true || error`` is true, evaluating left to right. The subset and the data they
may run on are described in ``_fastpath``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bastion.policy._fastlookup import MISSING, Getter

Fn = Callable[[dict[str, Any]], bool | None]  # a compiled condition


def boolean(get: Getter, *, negate: bool) -> Fn:
    """A path used as a condition (or negated): only a bool is an answer."""
    return lambda data: v != negate if type(v := get(data)) is bool else None  # not v if negated


def not_(inner: Fn) -> Fn:
    """``!inner``: an unknown stays unknown."""
    return lambda data: None if (v := inner(data)) is None else not v


def equals(getter: Getter, const: Any) -> Fn:
    """``path == const`` on clean data, specialised by the literal's kind."""
    kind = type(const)
    if kind is str or kind is bool:
        def eq_same(data: dict[str, Any]) -> bool | None:
            v = getter(data)
            if type(v) is kind:
                return bool(v == const)
            return None if v is MISSING else False

        return eq_same
    if const is None:
        return lambda data: None if (v := getter(data)) is MISSING else v is None
    other = float if kind is int else int  # int against double: a conversion; leave it to CEL

    def eq_number(data: dict[str, Any]) -> bool | None:
        v = getter(data)
        t = type(v)
        if t is kind:
            return bool(v == const)
        return None if v is MISSING or t is other else False

    return eq_number


def order(value: Any, const: Any, op: str) -> bool | None:
    """``value OP const`` for ``OP`` one of ``_<_``, ``_<=_``, ``_>_``, ``_>=_``: values of the
    literal's own kind only."""
    if value is MISSING or type(value) is not type(const):
        return None
    if op == "_<_":
        return bool(value < const)
    if op == "_<=_":
        return bool(value <= const)
    if op == "_>_":
        return bool(value > const)
    return bool(value >= const)


def in_literals(value: Any, items: list[Any]) -> bool | None:
    """``value in [items]`` for a list of literals, with CEL's heterogeneous equality."""
    if value is MISSING:
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


def contains(haystack: Any, needle: Any) -> bool | None:
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


def and_(left: Fn, right: Fn) -> Fn:
    """``left && right``: false if either is false, whatever the other gives."""
    def run(data: dict[str, Any]) -> bool | None:
        a = left(data)
        if a is False:
            return False
        b = right(data)
        if b is False:
            return False
        return a and b  # True, or None when either is unknown

    return run


def or_(left: Fn, right: Fn) -> Fn:
    """``left || right``: true if either is true, whatever the other gives."""
    def run(data: dict[str, Any]) -> bool | None:
        a = left(data)
        if a is True:
            return True
        b = right(data)
        if b is True:
            return True
        return None if a is None else b  # False, or None when either is unknown

    return run
