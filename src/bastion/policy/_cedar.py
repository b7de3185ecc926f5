"""Policies written in Cedar, evaluated in-process by ``cedarpy`` with bastion's semantics.

The request an action becomes:

* principal ``Agent::"<agent id>"``, with the agent's facts (trust, ring, roles) as attributes;
* action ``Action::"<canonical tool name>"`` (``Action::""`` at input/output without a tool);
* resource ``Stage::"<stage>"``;
* context ``{args, session: {id}, context, result?}``; floats become Cedar ``decimal`` values
  (at most four decimal places) and ``null`` values are left out, since Cedar has neither.

Decisions keep DESIGN.md's order: a matching ``forbid`` denies; else a matching ``permit``
annotated ``@approval("why")`` requires approval; else a matching ``permit`` allows; else deny.
Cedar skips a policy whose condition errs; bastion does not let that fail open: an erroring
``forbid`` (or ``@approval`` permit) counts as matching, and every error is reported. A request
that cannot be built (an unrepresentable value) is a deny with the error. Rule ids are the
policies' ``@id`` annotations (else Cedar's ``policyN``). Redaction, rate limits and budgets are
YAML-policy features; a Cedar policy does not have them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from bastion._canon import LazyModule
from bastion._errors import PolicyError
from bastion.policy._model import Effect, Policy

orjson: Any = LazyModule("orjson", globals())  # imported on first use

_ERR_POLICY = re.compile(r"policy `([^`]+)`")


class CedarPolicy:
    """A parsed Cedar policy set plus what bastion needs to know of each policy."""

    def __init__(self, text: str, path: str = "<text>"):
        cedarpy = _cedarpy()
        try:
            self._set = cedarpy.PolicySet.from_str(text)
            est = orjson.loads(cedarpy.policies_to_json_str(text))
        except ValueError as exc:
            line, col = _locate(text, cedarpy)
            raise PolicyError(f"cedar: {exc}", path=path, line=line, column=col) from None
        self._effects: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        self._approval: dict[str, str] = {}
        for pid, body in est.get("staticPolicies", {}).items():
            notes = body.get("annotations") or {}
            self._effects[pid] = body["effect"]
            self._ids[pid] = notes.get("id") or pid
            if "approval" in notes:
                if body["effect"] != "permit":
                    line, col = _start_of(text, pid, cedarpy)
                    raise PolicyError(f"cedar: '@approval' only applies to permit policies "
                                      f"({self._ids[pid]!r})", path=path, line=line, column=col)
                self._approval[pid] = notes["approval"] or "approval required"
        if est.get("templates"):
            line, col = _start_of(text, next(iter(est["templates"])), cedarpy)
            raise PolicyError("cedar: templates are not supported; link them first", path=path,
                              line=line, column=col)
        self.digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        self.policy = Policy(version=1, name=Path(path).stem, default=Effect.DENY, rules=(),
                             source=path, digest=self.digest)
        self._cedarpy = cedarpy
        self.size = len(self._effects)  # policies in the set

    def decide(self, stage: str, tool: str, agent_id: str, agent: dict[str, Any],
               data: dict[str, Any]) -> tuple[Effect, tuple[str, ...], tuple[str, ...],
                                                tuple[str, ...]]:
        """(effect, rule ids, reasons, errors) for one action."""
        try:
            context = {"args": _cedar_value(data.get("args") or {}),
                       "session": {"id": data["session"]["id"]},
                       "context": _cedar_value(data.get("context") or {})}
            if data.get("result") is not None:
                context["result"] = _cedar_value(data["result"])
            attrs = {k: _cedar_value(v) for k, v in agent.items() if k != "id" and v is not None}
        except (TypeError, ValueError) as exc:
            return Effect.DENY, (), ("request cannot be expressed in cedar",), (str(exc),)
        entities = [{"uid": {"type": "Agent", "id": agent_id}, "attrs": attrs, "parents": []}]
        request = {"principal": f'Agent::{_quote(agent_id)}', "action":
                   f'Action::{_quote(tool)}', "resource": f'Stage::{_quote(stage)}',
                   "context": context}
        try:
            res = self._cedarpy.is_authorized(request, self._set, entities)
        except Exception as exc:
            return Effect.DENY, (), ("cedar evaluation failed",), (str(exc),)
        raw_errors = tuple(str(e) for e in res.diagnostics.errors)
        matched = list(res.diagnostics.reasons)
        for err in raw_errors:
            m = _ERR_POLICY.search(err)
            if m and (self._effects.get(m.group(1)) == "forbid" or m.group(1) in self._approval):
                matched.append(m.group(1))
        errors = tuple(self._named(err) for err in raw_errors)
        forbids = [p for p in matched if self._effects.get(p) == "forbid"]
        if forbids:
            return Effect.DENY, self._names(forbids), self._why(forbids, "forbid"), errors
        approvals = [p for p in matched if p in self._approval]
        if approvals:
            return (Effect.REQUIRE_APPROVAL, self._names(approvals),
                    tuple(self._approval[p] for p in approvals), errors)
        permits = [p for p in matched if self._effects.get(p) == "permit"]
        if permits:
            return Effect.ALLOW, self._names(permits), self._why(permits, "permit"), errors
        return Effect.DENY, (), ("no cedar policy permits this action",), errors

    def _named(self, error: str) -> str:
        """A cedar error with the policy it names shown by its ``@id`` ("policy1" is the
        set's own numbering)."""
        m = _ERR_POLICY.search(error)
        if m is None or self._ids.get(m.group(1), m.group(1)) == m.group(1):
            return error
        return f"{error} (policy {self._ids[m.group(1)]!r})"

    def _names(self, pids: list[str]) -> tuple[str, ...]:
        return tuple(self._ids[p] for p in sorted(set(pids), key=_policy_order))

    def _why(self, pids: list[str], effect: str) -> tuple[str, ...]:
        return tuple(f"cedar {effect} {self._ids[p]!r}" for p in sorted(set(pids),
                                                                         key=_policy_order))


def load_cedar(path: str | Path) -> CedarPolicy:
    from bastion.policy._yaml import read_source

    return CedarPolicy(read_source(path), str(path))


def load_any(path: str | Path) -> Policy | CedarPolicy:
    """A policy file by its name: ``.cedar`` is Cedar, anything else YAML."""
    from bastion.policy._loader import load_policy

    return load_cedar(path) if str(path).endswith(".cedar") else load_policy(path)


def _cedarpy() -> Any:
    try:
        import cedarpy
    except ImportError:  # pragma: no cover - depends on the install
        raise PolicyError("cedar policies need the 'cedar' extra: pip install 'bastion[cedar]'",
                          line=0, column=0) from None
    return cedarpy


def _policy_order(pid: str) -> tuple[int, str]:
    digits = pid.removeprefix("policy")
    return (int(digits), pid) if digits.isdigit() else (1 << 30, pid)


def _quote(text: str) -> str:
    return str(orjson.dumps(text).decode())


def _cedar_value(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise ValueError("value nested deeper than 32 levels")
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"integer {value} is outside cedar's 64-bit range")
        return value
    if isinstance(value, float):
        from decimal import Decimal, InvalidOperation

        try:
            dec = Decimal(repr(value))
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number cedar can hold") from None
        if dec != dec.quantize(Decimal("0.0001")):
            raise ValueError(f"{value!r} has more than four decimal places")
        return {"__extn": {"fn": "decimal", "arg": f"{dec:.4f}"}}
    if isinstance(value, dict):
        return {str(k): _cedar_value(v, depth + 1) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple | set | frozenset):
        return [_cedar_value(v, depth + 1) for v in value if v is not None]
    raise ValueError(f"a {type(value).__name__} cannot be expressed in cedar")


def _start_of(text: str, pid: str, cedarpy: Any) -> tuple[int, int]:
    """The line and column where the policy or template cedar calls ``pid`` starts (its
    annotations included), found by parsing longer and longer prefixes; 1:1 if not found."""
    start = 0
    for m in re.finditer(r";", text):
        try:
            parsed = orjson.loads(cedarpy.policies_to_json_str(text[:m.end()]))
        except ValueError:
            continue  # a ';' inside a string or a comment: not a policy's end
        if pid in parsed.get("staticPolicies", {}) or pid in parsed.get("templates", {}):
            return _position(text, start)
        start = m.end()
    return 1, 1


def _position(text: str, start: int) -> tuple[int, int]:
    """Line and column of the first character at or after ``start`` that is not blank."""
    offset = start + len(text[start:]) - len(text[start:].lstrip())
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _locate(text: str, cedarpy: Any) -> tuple[int, int]:
    """The line and column where the first policy that fails to parse starts."""
    start = 0
    for m in re.finditer(r';', text):
        chunk = text[start:m.end()]
        try:
            cedarpy.PolicySet.from_str(text[:m.end()])
        except ValueError:
            return _position(text, start + len(chunk) - len(chunk.lstrip()))
        start = m.end()
    return _position(text, start)
