"""The values that cross the kernel boundary: ``Action`` in, ``Decision`` out.

Both are immutable named tuples: the kernel builds one of each per decision, and a named tuple is
several times cheaper to construct than a frozen dataclass.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Protocol

EffectName = Literal["allow", "deny", "require_approval"]
EMPTY: Mapping[str, Any] = MappingProxyType({})


class Action(NamedTuple):
    """One thing an agent wants to do, at one intervention point (``stage``).

    ``tool`` may be omitted at ``input`` and ``output``. ``agent`` and ``session`` carry ids
    (``{"id": ...}``); any trust, ring or roles in them are ignored: the kernel takes those only
    from its registered fact providers. ``approval`` presents a granted approval id. The kernel
    reads ``args`` during ``evaluate`` and keeps a snapshot; later changes do not reach the audit.
    """

    tool: str | None = None
    args: Mapping[str, Any] = EMPTY
    stage: str = "pre_tool"
    agent: Mapping[str, Any] = EMPTY
    session: Mapping[str, Any] = EMPTY
    context: Mapping[str, Any] = EMPTY
    result: Any = None
    approval: str | None = None


class Decision(NamedTuple):
    """The kernel's typed answer. ``allowed`` is true only for ``allow``.

    ``args`` (pre_tool) and ``result`` (post_tool) are what the caller must pass on: redacted when
    a redact obligation applied, otherwise the originals. ``approval_id`` names the approval a
    ``require_approval`` decision created (or the one an approved decision consumed).

    ``code`` is one stable word for why: ``policy`` (a rule decided), ``default``, ``approval``,
    ``rate_limit``, ``budget``, ``kill_switch``, ``invalid_tool``, ``invalid_stage``,
    ``missing_tool``, ``invalid_identity``, ``invalid_args`` (arguments that are not a map),
    ``guard``, ``quarantine`` (an argument holds a
    quarantine handle the session does not have), ``flow_incomplete`` (a rule reads
    ``session.history`` that this kernel has not seen all of), ``session_ended`` (the session was
    ended with ``Kernel.end_session``), ``internal_error``, ``audit_unavailable``.
    """

    id: str
    effect: EffectName
    stage: str
    tool: str
    rule_ids: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    obligations: tuple[str, ...] = ()
    policy: str = ""
    approval_id: str | None = None
    args: Mapping[str, Any] | None = None
    result: Any = None
    redacted: bool = False
    ts_ns: int = 0
    code: str = "policy"
    agent: str = ""
    session: str = ""

    @property
    def allowed(self) -> bool:
        return self.effect == "allow"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (what ``bastion eval`` prints)."""
        out: dict[str, Any] = {
            "id": self.id,
            "effect": self.effect,
            "allowed": self.allowed,
            "code": self.code,
            "stage": self.stage,
            "tool": self.tool,
            "rule_ids": list(self.rule_ids),
            "errors": list(self.errors),
            "reasons": list(self.reasons),
            "obligations": list(self.obligations),
            "policy": self.policy,
        }
        if self.approval_id is not None:
            out["approval_id"] = self.approval_id
        if self.redacted:
            out["redacted"] = True
            if self.stage == "post_tool":
                out["result"] = self.result
            elif self.args is not None:
                out["args"] = dict(self.args)
        return out


class AgentFacts(Protocol):
    """Supplies what the kernel must not take from the caller: trust, ring, roles, scopes."""

    def __call__(self, agent_id: str) -> Mapping[str, Any]: ...


class Guard(Protocol):
    """A check the kernel runs on every action before the policy, supplied by the layers above
    (a capability-token check, a ring check). ``None`` lets the action go on to the policy; a
    string denies it with that reason (``code: guard``); an exception denies it too."""

    def __call__(self, action: Action, tool: str, agent_id: str) -> str | None: ...


def _plain_map(value: Any) -> Any:
    """A dict for CEL (which refuses other mapping types); anything else is passed unchanged,
    so a wrong type makes conditions err (and the combiner fail closed) instead of raising."""
    if type(value) is dict:
        return value
    if value is EMPTY:
        return {}
    return dict(value) if isinstance(value, Mapping) else value
