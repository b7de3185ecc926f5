"""Pure evaluation of a compiled policy: no I/O, no clock, no environment reads.

Combining, in this order (DESIGN.md):

1. any matching ``deny`` rule → deny;
2. else any matching ``require_approval`` rule → require_approval;
3. else any matching ``allow`` rule → allow;
4. else the policy's ``default``.

When the outcome is allow or require_approval, matching ``redact`` and ``audit`` rules become
obligations (the kernel applies them to a require_approval once it is approved).
A condition that errors *matches* for deny, require_approval, redact and audit rules (each of those
only makes the outcome safer) and *does not match* for allow rules; every error is returned.
Tiers are evaluated in that order and a later tier is not evaluated once an earlier one decides,
so ``errors`` holds the errors of the tiers that were evaluated. All candidate conditions are
first run as one combined program; only when that errs are they run one by one, tier by tier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from cel_expr_python import cel

from bastion.policy._celsafe import cel_safe
from bastion.policy._compile import Candidates, CompiledPolicy, CompiledRule, Tier
from bastion.policy._fastdata import clean
from bastion.policy._fastpath import values_function
from bastion.policy._model import Effect, Stage

_DECIDING = (Effect.DENY, Effect.REQUIRE_APPROVAL, Effect.ALLOW)


class Verdict(NamedTuple):
    """The policy's answer before state (limits, budgets, approvals) is applied."""

    effect: Effect
    rules: tuple[CompiledRule, ...]  # the rules that decided
    errors: tuple[str, ...]
    obligations: tuple[CompiledRule, ...] = ()
    default_applied: bool = False
    rule_ids: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    limited: bool = False  # some deciding rule carries a rate limit


def evaluate(compiled: CompiledPolicy, stage: Stage, tool: str, agent_id: str,
             data: Mapping[str, Any]) -> Verdict:
    """Decide one action. ``data`` holds the CEL variables (see ``bastion.policy._cel``)."""
    cands = compiled.candidates(stage, tool)
    if cands.static is not None:
        return cands.static  # type: ignore[no-any-return]
    return evaluate_tiers(compiled.policy.default, cands, agent_id, data)


_OBLIGED = (Effect.ALLOW, Effect.REQUIRE_APPROVAL)  # outcomes that carry obligations


def evaluate_tiers(default: Effect, cands: Candidates, agent_id: str,
                   data: Mapping[str, Any]) -> Verdict:
    """Combine the tiers of ``cands`` for one action (see the module docstring)."""
    if cands.fast is not None:
        found = cands.fast(data)
        if found is not None:
            return found  # type: ignore[no-any-return]
    view = {k: data[k] for k in cands.variables if k in data}
    state = _Data(data, cands.variables, _clean(view))
    errors: list[str] = []
    decided: Effect | None = None
    deciding: list[CompiledRule] = []
    obligations: list[CompiledRule] = []
    for tier in cands.tiers:
        if tier.effect in _DECIDING:
            if decided is not None:
                continue
            matched = _matches(tier, agent_id, state, errors,
                               error_matches=tier.effect is not Effect.ALLOW)
            if matched:
                decided, deciding = tier.effect, matched
        elif (decided or default) in _OBLIGED:
            obligations.extend(_matches(tier, agent_id, state, errors, error_matches=True))
    return _verdict(default, decided, deciding, errors, obligations)


def specialise(default: Effect, cands: Candidates, conditional: list[CompiledRule]
               ) -> Callable[[Mapping[str, Any]], Verdict | None]:
    """The no-error path for one candidate set, as a closure.

    It answers from the positions of the conditions that are true, mapping them to a verdict
    computed once and cached (the verdict depends on nothing else). The positions come from
    the Python fast path when every condition is in its subset and the data is clean (see
    ``_fastpath``), else from one CEL program (the single condition, or all of them combined).
    It returns ``None`` (take the general path) when the data holds a NUL byte or any condition
    errs.
    """
    names = tuple(sorted(cands.variables))
    single = len(conditional) == 1
    program = conditional[0].program if single else cands.combined
    if program is None:
        return lambda data: None
    python = values_function([cr.program for cr in conditional])
    tiers = cands.tiers
    cache: dict[Any, Verdict] = {}

    def fast(data: Mapping[str, Any]) -> Verdict | None:
        view: dict[str, Any] = (data if type(data) is dict and len(data) == len(names)
                                else {n: data[n] for n in names if n in data})
        if not _clean(view):  # converted first, on the general path
            return None
        key = python(view) if python is not None else None
        if key is None:
            values = _run(program, view)
            if single:
                if type(values) is not bool:
                    return None
                key = (0,) if values else ()
            elif type(values) is list and all(type(v) is bool for v in values):
                key = tuple([i for i, v in enumerate(values) if v])
            else:
                return None
        found = cache.get(key)
        if found is None:
            found = _from_values(default, tiers, frozenset(key))
            if len(cache) < _VERDICT_CACHE:
                cache[key] = found
        return found

    return fast


_VERDICT_CACHE = 1024


def _from_values(default: Effect, tiers: tuple[Tier, ...], trues: frozenset[int]) -> Verdict:
    """The verdict from which conditions are true (none erred, every rule applies); conditions
    are numbered across the tiers in order."""
    decided: Effect | None = None
    deciding: list[CompiledRule] = []
    obligations: list[CompiledRule] = []
    position = 0
    for tier in tiers:
        matched = list(tier.unconditional)
        for cr in tier.conditional:
            if position in trues:
                matched.append(cr)
            position += 1
        if len(matched) > 1:
            matched.sort(key=_index)
        if tier.effect in _DECIDING:
            if decided is None and matched:
                decided, deciding = tier.effect, matched
        elif (decided or default) in _OBLIGED:
            obligations.extend(matched)
    return _verdict(default, decided, deciding, [], obligations)


def _verdict(default: Effect, decided: Effect | None, deciding: list[CompiledRule],
             errors: list[str], obligations: list[CompiledRule]) -> Verdict:
    if decided is None:
        return Verdict(default, (), tuple(errors), tuple(obligations), True, (),
                       (f"no rule decided; policy default is {default.value}",))
    return Verdict(decided, tuple(deciding), tuple(errors), tuple(obligations), False,
                   tuple([cr.rule.id for cr in deciding]), tuple([cr.reason for cr in deciding]),
                   any([cr.rule.limit is not None for cr in deciding]))


# variables the kernel builds from validated parts (the canonical tool, the catalog's entry, the
# arguments' labels: clean when ``args`` is), and ``now``, a datetime, which CEL holds as the
# timestamp it is declared as: not walked again on every decision
_BUILT = frozenset({"tool", "tool_info", "arg_labels", "now"})


def _clean(view: Mapping[str, Any]) -> bool:
    """``clean`` for an activation, looking at what callers passed (``args``, ``session``,
    ``agent``, ``context``, ``result``)."""
    return all(name in _BUILT or clean(value, 1) for name, value in view.items())


class _Data:
    """The activation data: passed to CEL as it is when CEL holds it unchanged (``clean``),
    else converted first (``cel_safe``; never hand the binding what it cannot convert, nor a
    NUL it would cut a string at), and converted the first time an evaluation errs."""

    __slots__ = ("data", "names", "poison", "safe")

    def __init__(self, data: Mapping[str, Any], names: frozenset[str], is_clean: bool):
        self.data = data
        self.names = names  # the variables the candidate conditions read
        self.poison: str | None = None  # set when no condition may be run on this data
        self.safe = False
        if not is_clean:
            self.make_safe()

    def view(self, names: frozenset[str]) -> dict[str, Any]:
        d = self.data
        return {k: d[k] for k in names if k in d}

    def make_safe(self) -> None:
        if self.safe:
            return
        self.safe = True
        try:  # ``now`` is a datetime, which CEL holds as the timestamp it is declared as
            self.data = {k: v if k == "now" else cel_safe(v) for k, v in self.data.items()}
        except ValueError as exc:  # nested deeper than 64 levels
            self.poison = f"{exc}; no condition is run"
            return
        if _has_nul(self.view(self.names), 0):  # a NUL inside an object, now a string
            self.poison = _NUL_ERROR


def _matches(tier: Tier, agent_id: str, data: _Data, errors: list[str], *,
             error_matches: bool) -> list[CompiledRule]:
    if tier.agent_any:
        out, cond = list(tier.unconditional), tier.conditional
    else:
        out = [cr for cr in tier.unconditional if cr.applies_to_agent(agent_id)]
        cond = tuple(cr for cr in tier.conditional if cr.applies_to_agent(agent_id))
    if not cond:
        return out
    if len(cond) == 1 and not data.safe:
        cr = cond[0]
        value = _run(cr.program, data.view(cr.variables))
        if value is False:
            return out
        if value is True:
            out.append(cr)
            out.sort(key=_index)
            return out
    data.make_safe()
    if data.poison is not None:
        for cr in cond:
            errors.append(f"rule {cr.rule.id!r}: {data.poison}")
            if error_matches:
                out.append(cr)
        out.sort(key=_index)
        return out
    for cr in cond:
        value = _outcome(cr.program, data.view(cr.variables))
        if type(value) is not bool:
            errors.append(f"rule {cr.rule.id!r}: {value}")
            if error_matches:
                out.append(cr)
        elif value:
            out.append(cr)
    out.sort(key=_index)
    return out


def _index(cr: CompiledRule) -> int:
    return cr.index


class _Arena(threading.local):
    """A CEL arena per thread, replaced every ``_ARENA_USES`` evaluations.

    Reusing an arena saves allocating one per evaluation; replacing it bounds the memory it
    holds (the binding frees an arena's objects only when the arena itself goes).
    """

    def __init__(self) -> None:
        self.arena = cel.Arena()
        self.left = _ARENA_USES


_ARENA_USES = 1000
_ARENAS = _Arena()


def _eval(program: Any, view: dict[str, Any]) -> Any:
    """The CEL value of ``program`` over ``view``, in this thread's arena; what the binding
    raises (on data it cannot convert) comes back as its message, a ``str``."""
    a = _ARENAS
    a.left -= 1
    if a.left <= 0:
        a.arena, a.left = cel.Arena(), _ARENA_USES
    try:
        return program.eval(data=view, arena=a.arena)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _run(program: Any, view: dict[str, Any]) -> Any:
    """The plain result; a CEL error comes back as its message (a ``str``), never a bool."""
    value = _eval(program, view)
    return value if isinstance(value, str) else value.plain_value()


def _outcome(program: Any, view: dict[str, Any]) -> Any:
    """``_run`` for the general path: a bool, or why the condition decided nothing (its error,
    or the value that is no bool, such as a ``dyn`` condition's string)."""
    value = _eval(program, view)
    if isinstance(value, str):
        return value
    plain = value.plain_value()
    if type(plain) is bool or value.type().name() == "ERROR":  # an error comes back as a value
        return plain
    shown = repr(plain)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"condition gave {type(plain).__name__} {shown}, not a bool"


_NUL_ERROR = "a string holds a NUL byte, which CEL would cut short; no condition is run"


def _has_nul(value: Any, depth: int) -> bool:
    """Whether any string or bytes inside ``value`` (keys too) holds a NUL byte.

    The CEL binding ends strings at NUL, so ``"ls\\0; rm -rf /"`` would reach a condition as
    ``"ls"``; such data is not evaluated at all (every condition errs, so the combiner fails
    closed). Nesting deeper than 64 levels counts as unsafe too.
    """
    t = type(value)
    if t is str or isinstance(value, str):  # subclasses too: CEL gets their plain value
        return "\x00" in value
    if t is dict or isinstance(value, Mapping):
        if depth > 64:
            return True
        for k, v in value.items():
            if (isinstance(k, str) and "\x00" in k) or _has_nul(v, depth + 1):
                return True
        return False
    if isinstance(value, list | tuple | set | frozenset):  # a namedtuple is a tuple
        if depth > 64:
            return True
        return any(_has_nul(v, depth + 1) for v in value)
    if isinstance(value, bytes | bytearray):
        return b"\x00" in value
    return False
