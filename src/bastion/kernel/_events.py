"""The audit events the kernel writes: one versioned event per decision, built in one place
(``decision_event``), and the outcome of a governed call.

Both are lazy mappings: the hot path keeps only a snapshot of the arguments (a shallow copy when
they are flat, a deep JSON-shaped copy otherwise), and the audit writer's thread builds the body
— fields, action digest, masking of credentials — when it first reads it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from bastion._canon import digest, norm_text, repaired, snapshot
from bastion.kernel._types import Action, Decision

_FLAT = frozenset((str, int, float, bool, type(None)))


class _Lazy(Mapping[str, Any]):
    """An audit event body built by ``_build`` the first time the audit writer reads it. Its
    values are in the tagged form already (``snapshot``): the writer does not escape them."""

    __slots__ = ()
    tagged = True

    def _build(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self._build()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())


class _Event(_Lazy):
    """The audit event of one decision, built when the audit writer first reads it.

    The hot path only takes a snapshot of the arguments (a shallow copy when they are flat, a deep
    JSON-shaped copy otherwise) so later changes by the caller or the tool cannot reach the log;
    the event's fields, the tagged form of a flat copy (a key that is not text, a NaN, a lone
    surrogate) and the action digest are computed on the audit writer's thread.
    """

    __slots__ = ("_action", "_args", "_body", "_decision", "_facts", "_guards", "_raw")

    def __init__(self, decision: Decision, action: Action, guards: tuple[str, ...] = (),
                 facts: Mapping[str, Any] | None = None):
        args = decision.args if decision.args is not None else action.args
        raw = False  # a flat copy: put in the tagged form on the writer's thread (_build)
        if type(args) is dict:
            for v in args.values():
                if type(v) not in _FLAT:
                    args = snapshot(args)
                    break
            else:
                args, raw = args.copy(), True
        else:
            args = snapshot(args)
        self._args = args
        self._raw = raw
        self._decision = decision
        self._action = action
        self._guards = guards
        # what the agent-facts provider answered for this decision (trust, ring, roles), as
        # read then: the provider may answer otherwise by the time the writer builds the event
        self._facts = None if facts is None else snapshot(
            {k: v for k, v in facts.items() if k != "id"})
        self._body: dict[str, Any] | None = None

    def _build(self) -> dict[str, Any]:
        body = self._body
        if body is None:
            args = snapshot(self._args) if self._raw else self._args  # keys, NaN, surrogates
            body = self._body = decision_event(self._decision, self._action, args)
            if self._guards:
                body["guards"] = list(self._guards)
            if self._facts is not None:
                body["agent_facts"] = self._facts
        return body


class _Outcome(_Lazy):
    """The audit event of a governed call's outcome, built on the audit writer's thread."""

    __slots__ = ("_body", "_parts")

    def __init__(self, decision: Decision, status: str, error: str | None,
                 duration_ns: int | None, ts: int):
        self._parts = (decision.id, decision.tool, status, error, duration_ns, ts)
        self._body: dict[str, Any] | None = None

    def _build(self) -> dict[str, Any]:
        body = self._body
        if body is None:
            did, tool, status, error, duration_ns, ts = self._parts
            body = {"kind": "outcome", "id": f"{did}:outcome", "decision_id": did, "ts": ts,
                    "tool": tool, "status": status}
            if error is not None:
                body["error"] = error[:2000]
            if duration_ns is not None:
                body["duration_ns"] = duration_ns
            self._body = body
        return body


def decision_event(d: Decision, action: Action, args: Any) -> dict[str, Any]:
    """The one place a decision's audit event (format version 1) is defined.

    Fields: ``kind`` ("decision"), ``id``, ``ts`` (ns), ``stage``, ``tool`` (canonical),
    ``tool_raw`` (when the caller's spelling differed), ``agent``, ``session``, ``effect``,
    ``code``,
    ``rule_ids``, ``errors``, ``reasons``, ``obligations``, ``policy`` (digest), ``args`` (as passed
    on: redacted when a redaction applied), ``action`` (digest of tool, stage, args, agent and
    session), ``approval_id``, ``result`` (post_tool) and ``context`` when present, ``guards``
    (the names of the kernel's guards that admitted the action) when any did, and
    ``agent_facts`` (what the agent-facts provider answered, when the decision read it; added by
    ``_Event``). The audit log adds ``v``, ``seq``, ``prev`` and the MAC over all of them.
    """
    shape = {"tool": d.tool, "stage": d.stage, "args": args, "agent": _ident(action.agent),
             "session": _ident(action.session)}
    try:
        action_digest = digest(shape)
    except (TypeError, ValueError):  # an agent or session id with a lone surrogate (the args
        # are a snapshot already): digested in the tagged form the event records
        shape = {**shape, "agent": repaired(shape["agent"]),
                 "session": repaired(shape["session"])}
        action_digest = digest(shape)
    event: dict[str, Any] = {
        "kind": "decision", "id": d.id, "ts": d.ts_ns, "stage": d.stage, "tool": d.tool,
        "agent": shape["agent"], "session": shape["session"], "effect": d.effect,
        "code": d.code, "rule_ids": list(d.rule_ids), "errors": list(d.errors),
        "reasons": list(d.reasons), "obligations": list(d.obligations), "policy": d.policy,
        "args": shape["args"], "action": action_digest,
    }
    if action.tool is not None and action.tool != d.tool:
        event["tool_raw"] = action.tool if isinstance(action.tool, str) else repr(action.tool)
    if d.approval_id is not None:
        event["approval_id"] = d.approval_id
    if d.stage == "post_tool":
        event["result"] = snapshot(d.result)
    if action.context:
        event["context"] = _masked_context(snapshot(action.context))
    return event


SECRET_CONTEXT_KEYS = frozenset({"bastion_token", "bastion_token_proof", "authorization",
                                 "api_key", "password"})


def _masked_context(context: Any) -> Any:
    """Credentials presented in the context (a ``snapshot``) are recorded by digest only
    (masking as data), in a map with keys that are not text (``$map`` pairs) too."""
    def masked(key: Any, value: Any) -> Any:
        if isinstance(key, dict) and set(key) == {"$bytes"}:  # a header-style bytes key
            with contextlib.suppress(ValueError, TypeError):
                key = bytes.fromhex(key["$bytes"]).decode("utf-8", "replace")
        secret = isinstance(key, str) and norm_text(key) in SECRET_CONTEXT_KEYS
        return {"$masked": digest(value)} if secret else value

    if not isinstance(context, dict):
        return context
    pairs = context.get("$map") if len(context) == 1 else None
    if isinstance(pairs, list):  # snapshot wraps a caller's own {"$map": ...} in "$obj"
        return {"$map": [[p[0], masked(p[0], p[1])] for p in pairs]}
    return {k: masked(k, v) for k, v in context.items()}


def _ident(holder: Mapping[str, Any]) -> str | None:
    """The ``id`` of an agent or session map; ``None`` when it has none that is text, and
    when reading it fails in any way (a mapping whose reads raise)."""
    try:
        if not holder:
            return ""
        if not isinstance(holder, Mapping):  # e.g. agent="a1": no id can be read
            return None
        value = holder.get("id", "")
    except Exception:
        return None
    return value if isinstance(value, str) else None


def _text(value: Any, show: Any) -> str:
    try:
        return str(show(value))
    except Exception:  # a repr or str that raises: the deny still gets made
        return f"<unprintable {type(value).__name__}>"


def _deny(did: str, ts: int, action: Action, policy: str, code: str, *,
          errors: tuple[str, ...] = (), reasons: tuple[str, ...] = (),
          tool: str | None = None) -> Decision:
    """A deny decided before the policy ran; ``tool`` is the canonical name once known."""
    if tool is None:
        tool = action.tool if type(action.tool) is str else _text(action.tool, repr)
    stage = action.stage if type(action.stage) is str else _text(action.stage, str)
    return Decision(id=did, effect="deny", stage=stage, tool=tool, errors=errors,
                    reasons=reasons or errors[:1] or (code.replace("_", " "),), policy=policy,
                    args=action.args, ts_ns=ts, code=code, agent=_ident(action.agent) or "",
                    session=_ident(action.session) or "")
