"""Compilation: CEL conditions compiled and type-checked once, rules indexed by stage and tool.

``CompiledPolicy.candidates(stage, tool)`` returns the rules that can apply to a canonical tool
name at a stage, split into effect tiers, plus every candidate condition combined into one CEL
program (a list literal) so the common case pays one CEL evaluation per decision. Candidate sets
are cached per (stage, tool) in a bounded cache.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from dataclasses import dataclass
from typing import Any

from bastion.policy._cel import environment, referenced_variables
from bastion.policy._model import Effect, Policy, Rule, Stage

_CEL_POS = re.compile(r"<input>:(\d+):(\d+): (.*?)(?:\n|$)")
_CACHE_MAX = 4096
TIER_ORDER = (Effect.DENY, Effect.REQUIRE_APPROVAL, Effect.ALLOW, Effect.REDACT, Effect.AUDIT)


def check_condition(source: str) -> tuple[int, int, str] | None:
    """Compile ``source``; ``(line, column, message)`` when it is not a valid bool condition
    (a ``dyn`` one, such as a bare ``args.flag``, is checked when it runs)."""
    try:
        expr = environment().compile(source)
    except RuntimeError as exc:
        text = str(exc)
        m = _CEL_POS.search(text)
        if m:
            msg = m.group(3).replace("ERROR: ", "").strip()
            return int(m.group(1)), int(m.group(2)), msg
        return 1, 1, text.removeprefix("INVALID_ARGUMENT: ").strip()
    kind = expr.return_type().name().lower()
    if kind not in ("bool", "dyn"):  # dyn ("args.flag"): a value that is no bool at run time
        return 1, 1, f"condition must be a bool, not {kind}"  # is an error (fails closed)
    bad = _bad_constant_regex(expr)
    if bad is not None:  # it would err on every evaluation: refused at load
        return 1, 1, bad
    return None


def _bad_constant_regex(program: Any) -> str | None:
    """The first ``matches()`` whose pattern is a constant RE2 refuses, as a message."""
    from bastion.policy._celast import checked_expr

    try:
        root = checked_expr(program, members=True)
    except (ValueError, KeyError, IndexError, StopIteration, UnicodeDecodeError):
        return None  # not readable here: CEL still errs (fails closed) at evaluation
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, tuple) or not node:
            continue
        if node[0] in ("member", "call") and node[1] == "matches" and len(node[2]) == 2 \
                and node[2][1][0] == "const" and isinstance(node[2][1][1], str):
            problem = re2_problem(node[2][1][1])
            if problem is not None:
                return f"matches(): invalid regular expression {node[2][1][1]!r}: {problem}"
        stack.extend(x for x in node[1:] if isinstance(x, tuple | list))
    return None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    index: int
    program: Any | None  # compiled CEL, None when the rule has no condition
    variables: frozenset[str]
    agent_any: bool
    agent_res: tuple[re.Pattern[str], ...]
    reason: str  # the rule's message, or a sentence naming it

    def applies_to_agent(self, agent_id: str) -> bool:
        return self.agent_any or any(r.match(agent_id) for r in self.agent_res)


@dataclass(frozen=True, slots=True)
class Tier:
    """The candidate rules of one effect."""

    effect: Effect
    unconditional: tuple[CompiledRule, ...]
    conditional: tuple[CompiledRule, ...]
    agent_any: bool  # no rule in the tier is limited to some agents


@dataclass(frozen=True, slots=True)
class Candidates:
    """What can apply to one (stage, tool).

    ``static`` is the verdict when nothing depends on the action (no condition, no agent glob).
    ``combined`` evaluates every condition of every tier at once, in tier order, as a list; it
    exists when no rule is limited to some agents. When it errs the evaluator falls back to
    running the conditions one by one, which is what attributes errors to rules.
    """

    tiers: tuple[Tier, ...]
    static: Any = None
    combined: Any = None
    variables: frozenset[str] = frozenset()
    fast: Any = None  # data -> Verdict | None: the no-error path, specialised for this set


class CompiledPolicy:
    """A policy ready to evaluate. Immutable once built; safe to share between threads."""

    def __init__(self, policy: Policy):
        self.policy = policy
        env = environment()
        self.rules: tuple[CompiledRule, ...] = tuple(
            CompiledRule(
                rule=r,
                index=i,
                program=env.compile(r.when) if r.when else None,
                variables=referenced_variables(r.when) if r.when else frozenset(),
                agent_any="*" in r.agents,
                agent_res=tuple(re.compile(fnmatch.translate(a), re.DOTALL) for a in r.agents),
                reason=r.message or f"rule {r.id!r} ({r.effect.value})",
            )
            for i, r in enumerate(policy.rules)
        )
        self._tool_res = [
            [re.compile(fnmatch.translate(t), re.DOTALL) for t in r.tools] for r in policy.rules
        ]
        self.cache: dict[tuple[Stage, str], Candidates] = {}
        self._lock = threading.Lock()

    @property
    def digest(self) -> str:
        return self.policy.digest

    def candidates(self, stage: Stage, tool: str) -> Candidates:
        """Rules that can apply to ``tool`` (canonical) at ``stage``, grouped in effect tiers."""
        key = (stage, tool)
        found = self.cache.get(key)
        if found is not None:
            return found
        built = self._build(stage, tool)
        with self._lock:
            if len(self.cache) >= _CACHE_MAX:
                self.cache.clear()
            self.cache[key] = built
        return built

    def _build(self, stage: Stage, tool: str) -> Candidates:
        env = environment()
        chosen = [
            cr
            for cr, res in zip(self.rules, self._tool_res, strict=True)
            if cr.rule.stage is stage and any(r.match(tool) for r in res)
        ]
        tiers = []
        for effect in TIER_ORDER:
            rules = [cr for cr in chosen if cr.rule.effect is effect]
            if not rules:
                continue
            cond = tuple(cr for cr in rules if cr.program is not None)
            plain = tuple(cr for cr in rules if cr.program is None)
            tiers.append(Tier(effect, plain, cond, all(cr.agent_any for cr in rules)))
        conditional = [cr for t in tiers for cr in t.conditional]
        if all(t.agent_any for t in tiers) and not conditional:
            from bastion.policy._eval import evaluate_tiers

            static = evaluate_tiers(self.policy.default, Candidates(tuple(tiers)), "", {})
            return Candidates(tuple(tiers), static=static)
        combined = None
        if len(conditional) > 1 and all(t.agent_any for t in tiers):
            # "\n" ends a trailing "// comment"; a condition at the parser's nesting limit
            # cannot be nested one level deeper, and then its rules run one by one.
            source = "[" + ", ".join(f"({cr.rule.when}\n)" for cr in conditional) + "]"
            try:
                combined = env.compile(source)
            except RuntimeError:
                combined = None
        variables = frozenset().union(*(cr.variables for cr in conditional))
        cands = Candidates(tuple(tiers), combined=combined, variables=variables)
        if all(t.agent_any for t in tiers):
            from bastion.policy._eval import specialise

            cands = Candidates(cands.tiers, combined=combined, variables=variables,
                               fast=specialise(self.policy.default, cands, conditional))
        return cands


def compile_policy(policy: Policy) -> CompiledPolicy:
    return CompiledPolicy(policy)


def re2_problem(pattern: str) -> str | None:
    """Why RE2 refuses ``pattern`` (``None`` when it compiles), without RE2's own logging."""
    import re2

    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(pattern, options)
    except Exception as exc:  # re2.error
        detail = exc.args[0] if exc.args else exc
        return detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    return None
