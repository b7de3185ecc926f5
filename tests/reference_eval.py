"""A deliberately naive reference evaluator for policy decisions, for differential testing.

It follows DESIGN.md "Combining" and nothing else: walk every rule in file order, test stage,
tool globs and agent globs with ``fnmatch.fnmatchcase``, compile each rule's ``when`` afresh and
evaluate it against the full activation data (no index, no effect tiers, no combined programs,
no caching, no short-circuit between effects), then combine:

1. any matching ``deny`` rule → deny;
2. else any matching ``require_approval`` rule → require_approval;
3. else any matching ``allow`` rule → allow;
4. else the policy's ``default``.

A condition that errors matches for ``deny``/``require_approval`` (and for the ``redact``/``audit``
obligations, which only make an allow safer) and does not match for ``allow``. When the outcome is
allow or require_approval, matching ``redact`` and ``audit`` rules become obligations.

Tuples and sets reach CEL as lists; integers beyond 64 bits are passed as they are, so a
condition that reads one errs (an overflow). Strings holding NUL bytes are out of scope (the CEL
binding cuts them short); ``test_differential`` covers them with targeted cases.
"""

from __future__ import annotations

import fnmatch
import re
import unicodedata
from collections.abc import Mapping
from typing import Any, NamedTuple

from bastion.policy import Effect, Policy, Rule, Stage
from bastion.policy._cel import environment
from bastion.policy._celsafe import cel_safe

_TOOL_CHARS = re.compile(r"[a-z0-9_\-.:/]+")


def reference_canonical_tool(name: str) -> str | None:
    """DESIGN.md: NFKC, casefold, zero-width and other format characters removed (and, as
    ``bastion._canon`` documents, surrounding white space trimmed); a name that still holds
    anything but ASCII letters, digits and ``_ - . : /`` is invalid (``None``)."""
    text = unicodedata.normalize("NFKC", name)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = unicodedata.normalize("NFKC", text.casefold()).strip()
    return text if _TOOL_CHARS.fullmatch(text) else None


class RefResult(NamedTuple):
    effect: str  # "allow" | "deny" | "require_approval"
    rule_ids: tuple[str, ...]  # the matching rules of the deciding effect, in file order
    has_errors: bool
    obligations: tuple[str, ...]  # ids of matching redact/audit rules: outcome allow/approval
    errors: tuple[tuple[str, str, str], ...]  # (rule id, rule effect, message) for every error
    default_applied: bool


def cel_data(value: Any) -> Any:
    """``value`` as conditions see it (README: argument values CEL has no type for are shown
    converted, ``bastion.policy._celsafe``): tuples and sets as lists, mappings as dicts, odd
    objects converted. Integers are passed unchanged: beyond 64 bits CEL errs (DESIGN.md: an
    overflow is an error). Data nested deeper than 64 levels is passed as it is."""
    try:
        return cel_safe(value)
    except ValueError:
        return value


def run_condition(source: str, data: Mapping[str, Any]) -> bool | str:
    """``True``/``False``, or the error message (a ``str``) when evaluation does not give a bool."""
    program = environment().compile(source)  # fresh every time, on purpose
    try:
        value = program.eval(data=dict(data))
    except Exception as exc:  # the binding raises on data it cannot convert
        return f"raised {type(exc).__name__}: {exc}"
    if value.type().name() != "BOOL":
        return f"{value.type().name()}: {value.plain_value()!r}"
    plain = value.plain_value()
    if type(plain) is not bool:
        return f"not a bool: {plain!r}"
    return plain


def applies(rule: Rule, stage: Stage | str, tool: str, agent_id: str) -> bool:
    """Stage, tool globs (over the canonical name) and agent globs, without any index."""
    if rule.stage.value != str(Stage(stage).value):
        return False
    if not any(fnmatch.fnmatchcase(tool, glob) for glob in rule.tools):
        return False
    return any(fnmatch.fnmatchcase(agent_id, glob) for glob in rule.agents)


def reference_evaluate(policy: Policy, stage: Stage | str, tool: str, agent_id: str,
                       data: Mapping[str, Any]) -> RefResult:
    """Decide one action the slow, obvious way (see the module docstring)."""
    safe = {k: cel_data(v) for k, v in data.items()}
    matched: dict[Effect, list[str]] = {e: [] for e in Effect}
    errors: list[tuple[str, str, str]] = []
    for rule in policy.rules:
        if not applies(rule, stage, tool, agent_id):
            continue
        if rule.when is None:
            hit = True
        else:
            value = run_condition(rule.when, safe)
            if isinstance(value, bool):
                hit = value
            else:
                errors.append((rule.id, rule.effect.value, value))
                hit = rule.effect is not Effect.ALLOW
        if hit:
            matched[rule.effect].append(rule.id)
    default_applied = False
    if matched[Effect.DENY]:
        effect, ids = Effect.DENY, matched[Effect.DENY]
    elif matched[Effect.REQUIRE_APPROVAL]:
        effect, ids = Effect.REQUIRE_APPROVAL, matched[Effect.REQUIRE_APPROVAL]
    elif matched[Effect.ALLOW]:
        effect, ids = Effect.ALLOW, matched[Effect.ALLOW]
    else:
        effect, ids, default_applied = policy.default, [], True
    obligations: list[str] = []
    if effect in (Effect.ALLOW, Effect.REQUIRE_APPROVAL):
        obligations = [r.id for r in policy.rules
                       if r.id in matched[Effect.REDACT] or r.id in matched[Effect.AUDIT]]
    return RefResult(effect.value, tuple(ids), bool(errors), tuple(obligations), tuple(errors),
                     default_applied)
