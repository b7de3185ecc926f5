"""Scopes and constraints of capability tokens: a small language whose narrowing is decidable.

**Scopes** are ``kind:name`` strings (``tool:send_email``). A ``*`` may appear only as the last
character (``tool:read_*``, ``tool:*``), so "pattern P covers pattern C" is exact: P without a
star covers only itself; ``prefix*`` covers every pattern that starts with ``prefix``. No other
glob characters are allowed. Tool names are matched in their canonical form (``tool:`` + the
kernel's canonical tool name).

**Constraints** map a scope pattern to argument rules: ``{"tool:pay": {"amount": {"max": 100}}}``.
A rule is any of ``max``, ``min`` (numbers, inclusive), ``in`` (a list of at most ``MAX_IN``
scalars), ``eq`` (a scalar). A constraint applies to a call whose tool the pattern covers; the
argument must then be present and satisfy every rule (a missing argument fails: fail closed).
Booleans are not numbers; NaN and infinities match no rule; any integer compares exactly.

Narrowing (``check_narrowing``): a child's scopes must each be covered by some parent scope, and
every parent rule must be kept, equal or tighter (``max`` lower, ``min`` higher, ``in`` a subset,
``eq`` equal). At use every link of a chain is checked, so narrowing holds by construction too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from bastion._canon import canonical_tool
from bastion._errors import ConfigError

_SCOPE = re.compile(r"[a-z][a-z0-9_]*:[a-z0-9_\-.:/]*\*?")
_OPS = frozenset(("max", "min", "in", "eq"))
# Checking that one link narrows another compares every pair of scopes and of ``in`` values:
# bounded here, so a token of at most ``MAX_BYTES`` costs microseconds to verify, not minutes.
MAX_SCOPES = 256
MAX_IN = 256
Constraints = dict[str, dict[str, dict[str, Any]]]


def check_scope(pattern: str) -> str:
    """Return ``pattern`` if it is a valid scope (see module docstring), else ``ConfigError``."""
    if not isinstance(pattern, str) or _SCOPE.fullmatch(pattern) is None or pattern.endswith(":"):
        raise ConfigError(f"invalid scope {pattern!r} (kind:name, '*' only at the end)")
    return pattern


def covers(parent: str, child: str) -> bool:
    """True when every name ``child`` matches is also matched by ``parent``."""
    if parent.endswith("*"):
        return child.startswith(parent[:-1])
    return parent == child and not child.endswith("*")


def matches(pattern: str, name: str) -> bool:
    """True when the concrete scope ``name`` is granted by ``pattern``."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return pattern == name


def tool_scope(tool: str) -> str | None:
    """``tool:<canonical name>``, or ``None`` for an invalid tool name."""
    canon = canonical_tool(tool)
    return None if canon is None else f"tool:{canon}"


def _number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    # any int is finite (``math.isfinite`` would overflow on one beyond a float's range)
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool) or _number(value)


def _encodable(value: Any) -> bool:
    """A rule value a token can carry: canonical JSON writes an int beyond 64 bits as an object,
    which would not decode back into the same rule."""
    return not isinstance(value, int) or isinstance(value, bool) or -(2**63) <= value < 2**64


def check_constraints(constraints: Mapping[str, Any]) -> Constraints:
    """Validate and copy a constraint map; ``ConfigError`` names the first problem."""
    if not isinstance(constraints, Mapping):
        raise ConfigError("constraints must be a map of scope -> {arg: {rule: value}}")
    out: Constraints = {}
    for scope, args in constraints.items():
        check_scope(scope)
        if not isinstance(args, Mapping) or not args:
            raise ConfigError(f"constraints of {scope!r} must be a non-empty map of arguments")
        out[scope] = {}
        for arg, rules in args.items():
            if not isinstance(arg, str) or not arg:
                raise ConfigError(f"constraints of {scope!r}: argument names are strings")
            if not isinstance(rules, Mapping) or not rules or set(rules) - _OPS:
                raise ConfigError(f"constraint {scope!r}.{arg!r}: rules are a non-empty map of "
                                  f"{sorted(_OPS)}")
            for op, value in rules.items():
                ok = _number(value) if op in ("max", "min") else _scalar(value) if op == "eq" \
                    else isinstance(value, list) and all(_scalar(v) for v in value)
                ok = ok and all(map(_encodable, value if isinstance(value, list) else [value]))
                if op == "in" and ok and len(value) > MAX_IN:
                    raise ConfigError(f"constraint {scope!r}.{arg!r}.in: at most {MAX_IN} "
                                      "values")
                if not ok:
                    raise ConfigError(f"constraint {scope!r}.{arg!r}.{op}: invalid value "
                                      f"{value!r}")
            out[scope][arg] = dict(rules)
    return out


def _tighter(op: str, parent: Any, child: Any) -> bool:
    if op == "max":
        return bool(child <= parent)
    if op == "min":
        return bool(child >= parent)
    if op == "in":
        return all(any(_same(c, p) for p in parent) for c in child)
    return _same(child, parent)


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) or (_number(a) and _number(b) and a == b)


def check_narrowing(parent_scopes: Iterable[str], parent_cons: Constraints,
                    child_scopes: Iterable[str], child_cons: Constraints) -> str | None:
    """``None`` when the child narrows the parent; else a reason naming what widened."""
    parents = list(parent_scopes)
    for scope in child_scopes:
        if not any(covers(p, scope) for p in parents):
            return f"scope {scope!r} is not within the parent's scopes {parents}"
    for scope, args in parent_cons.items():
        for arg, rules in args.items():
            kept = child_cons.get(scope, {}).get(arg)
            if kept is None:
                return f"constraint {scope!r}.{arg!r} of the parent was dropped"
            for op, value in rules.items():
                if op not in kept or not _tighter(op, value, kept[op]):
                    return f"constraint {scope!r}.{arg!r}.{op} was widened or dropped"
    return None


def permits(scopes: Iterable[str], constraints: Constraints, tool: str,
            args: Mapping[str, Any]) -> str | None:
    """``None`` when one link's scopes and constraints allow calling ``tool`` with ``args``;
    else the reason. The caller checks every link of a chain."""
    name = tool_scope(tool)
    if name is None:
        return f"invalid tool name {tool!r}"
    if not any(matches(p, name) for p in scopes):
        return f"tool {name!r} is outside the token's scopes"
    for scope, rules_by_arg in constraints.items():
        if not matches(scope, name):
            continue
        for arg, rules in rules_by_arg.items():
            if arg not in args:
                return f"argument {arg!r} is required by a constraint of {scope!r}"
            problem = _check_value(args[arg], rules)
            if problem is not None:
                return f"argument {arg!r} {problem} (constraint of {scope!r})"
    return None


def _check_value(value: Any, rules: Mapping[str, Any]) -> str | None:
    for op, bound in rules.items():
        if op in ("max", "min"):
            if not _number(value):
                return f"must be a number, got {type(value).__name__}"
            if op == "max" and value > bound:
                return f"= {value!r} exceeds max {bound!r}"
            if op == "min" and value < bound:
                return f"= {value!r} is below min {bound!r}"
        elif op == "in" and not any(_same(value, b) for b in bound):
            return f"= {value!r} is not one of {bound!r}"
        elif op == "eq" and not _same(value, bound):
            return f"= {value!r} is not {bound!r}"
    return None
