"""Approvals: the kernel's step 5 (``require_approval``) and the decisions people make on them.

An approval is bound to one action's digest (canonical tool, stage, arguments, agent, session),
is single use and expires. A presented approval id is consumed only for the exact action it was
created for; a registered approver callback decides at once; otherwise a pending approval is
stored and its id returned for a person to grant or refuse (``Kernel.approve``/``refuse``, or
``bastion approve``). Every decision on an approval is audited.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from bastion._canon import (
    LazyModule,
    _has_non_finite,
    canonical_json,
    canonical_tool,
    digest,
    repaired,
)
from bastion._errors import ApprovalError
from bastion.flow._values import object_fields
from bastion.kernel._events import _ident
from bastion.kernel._types import Action
from bastion.policy import Effect
from bastion.state import Approval, StateStore

if TYPE_CHECKING:
    import orjson
else:
    orjson = LazyModule("orjson", globals())


class Approver(Protocol):
    """Decides a pending approval now: ``True`` grants, ``False`` refuses."""

    def __call__(self, approval: Approval, action: Action) -> bool: ...


def action_digest(action: Action) -> str:
    """The digest an approval is bound to: canonical tool, stage, arguments, agent, session,
    and at ``post_tool`` the result (a grant for one result releases no other). Lossless: two
    calls whose arguments differ anywhere get different digests (the audit's ``snapshot``
    shortens long object texts and deep nesting; this does not). Arguments that cannot be told
    apart exactly (nested deeper than ``MAX_DEPTH``) cannot be approved."""
    tool = canonical_tool(action.tool) if action.tool else ""
    args, form = _lossless(action.args)
    bound = {"tool": tool, "stage": action.stage, "args": args, "form": form,
             "agent": _ident(action.agent), "session": _ident(action.session)}
    if action.stage == "post_tool":
        bound["result"], bound["result_form"] = _lossless(action.result)
    return digest(bound)


def _lossless(value: Any) -> tuple[Any, str]:
    """Plain JSON data as it is; anything else (bytes, sets, big or non-finite numbers,
    objects, other mappings) in the exact form, which keeps every type apart."""
    try:
        raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
                           | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS)
        if b"null" in raw and _has_non_finite(value):  # orjson writes NaN as null
            raise ValueError("non-finite number")
        return orjson.loads(raw), "json"
    except (TypeError, ValueError):
        return _exact(value, 0), "exact"


MAX_DEPTH = 256  # levels of nesting an approved call's arguments may have


def _exact(value: Any, depth: int) -> Any:
    """``value`` as JSON data that keeps every difference: key types, sets, big and
    non-finite numbers, bytes, and each object's type, whole ``repr`` and fields."""
    if depth > MAX_DEPTH:
        raise ApprovalError(f"arguments nested deeper than {MAX_DEPTH} levels cannot be bound "
                            "to an approval")
    if isinstance(value, str):
        return repaired(value)  # text with a lone surrogate: tagged, not refused
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return {"$int": str(value)}
    if isinstance(value, float):
        return {"$float": repr(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, Mapping):
        pairs = [[_exact(k, depth + 1), _exact(v, depth + 1)] for k, v in value.items()]
        return {"$map": sorted(pairs, key=lambda kv: canonical_json(kv[0]))}
    if isinstance(value, list | tuple):
        return [_exact(v, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        items = [_exact(v, depth + 1) for v in value]
        return {"$set": sorted(items, key=canonical_json)}
    kind = type(value)
    return {"$type": f"{kind.__module__}.{kind.__qualname__}", "$repr": repr(value),
            "$fields": [_exact(v, depth + 1) for v in object_fields(value)]}


class Approvals:
    """One kernel's approvals, kept in its state store and audited in its audit log."""

    def __init__(self, state: StateStore, approver: Approver | None, ttl_s: float, audit: Any,
                 clock: Callable[[], int]):
        self._state = state
        self._approver = approver
        self._ttl = ttl_s
        self._audit = audit
        self._clock = clock

    def resolve(self, action: Action, tool: str, agent_id: str, session_id: str, did: str,
                ts: int) -> tuple[Effect, str | None, str]:
        """Step 5 for an action the policy says needs approval: the effect, the approval id and
        a note for the decision's reasons."""
        dg = action_digest(action)
        if action.approval is not None:
            used = self._state.consume_approval(action.approval, dg, ts / 1e9)
            if used is not None:
                return Effect.ALLOW, used.id, f"approved by {used.decided_by or 'approver'}"
            return Effect.DENY, action.approval, (
                f"approval {action.approval!r} is not granted for this exact action, "
                "has expired or was already used")
        pending = Approval(id=f"apr-{did}", digest=dg, tool=tool, agent=agent_id,
                           session=session_id, created=ts / 1e9, expires=ts / 1e9 + self._ttl)
        if self._approver is not None:
            try:
                granted = self._approver(pending, action) is True
            except Exception as exc:
                return Effect.DENY, pending.id, f"approver failed: {type(exc).__name__}: {exc}"
            status = "used" if granted else "refused"
            self._state.put_approval(Approval(**{**_fields(pending), "status": status,
                                                 "decided_by": "approver-callback"}))
            if granted:
                return Effect.ALLOW, pending.id, "approved by approver callback"
            return Effect.DENY, pending.id, "refused by approver callback"
        self._state.put_approval(pending)
        return Effect.REQUIRE_APPROVAL, pending.id, f"approval {pending.id!r} pending"

    def decide(self, approval_id: str, grant: bool, by: str, note: str) -> Approval:
        """Grant or refuse a pending approval, as ``by``; audited."""
        if not isinstance(by, str) or not by.strip():
            raise ApprovalError("an approval decision needs the approver's identity ('by')")
        if not by.isprintable() or len(by) > 256:  # a newline would forge a line of the record
            raise ApprovalError("the approver's identity ('by') must be printable text of at "
                                "most 256 characters")
        decided = self._state.decide_approval(approval_id, grant, by, note, self._clock() / 1e9)
        if self._audit is not None:
            self._audit.append({"kind": "approval", "id": f"{approval_id}:{decided.status}",
                                "ts": self._clock(), "approval_id": approval_id,
                                "status": decided.status, "by": by, "note": note,
                                "digest": decided.digest, "tool": decided.tool})
        return decided

    def pending(self) -> list[Approval]:
        """The approvals still waiting for a decision: pending and not expired."""
        now = self._clock() / 1e9
        return [a for a in self._state.list_approvals("pending") if a.expires > now]


def _fields(a: Approval) -> dict[str, Any]:
    return {k: getattr(a, k) for k in a.__dataclass_fields__}
