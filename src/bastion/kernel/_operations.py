"""The kernel's operations besides deciding: approvals, the information-flow session API,
budgets and loop breakers, outcomes, and its lifecycle. A mixin of ``Kernel``, which sets every
attribute declared here."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from bastion._errors import ConfigError
from bastion.kernel._approvals import action_digest
from bastion.kernel._events import _Outcome
from bastion.kernel._types import Action, Decision
from bastion.state import Approval, StateStore

if TYPE_CHECKING:
    from bastion.flow import Provenance
    from bastion.kernel._approvals import Approvals
    from bastion.kernel._budgets import SessionBudgets
    from bastion.kernel._flow import FlowTracker
    from bastion.policy import Policy


class KernelOperations:
    """What a ``Kernel`` offers besides ``evaluate``."""

    policy: Policy
    _audit: Any
    _state: StateStore
    _clock: Callable[[], int]
    _flow: FlowTracker
    _flow_on: bool
    _approvals: Approvals
    _session_budgets: SessionBudgets
    _flags: Callable[[], Mapping[str, str]]
    _guards: tuple[Any, ...]
    _guard_names: tuple[str, ...]
    _checks_results: bool
    _closed: bool

    # -- information flow -----------------------------------------------------------------------
    def provenance(self, session_id: str) -> Provenance:
        """The provenance the kernel keeps for ``session_id`` (for inspection and tests)."""
        return self._flow.provenance(session_id)

    def end_session(self, session_id: str, *, by: str, reason: str = "") -> None:
        """End a session's information flow: its provenance and quarantined values are
        forgotten, and the state store keeps a tombstone, so every kernel on the store denies
        what the session's labels would decide (code ``session_ended``) from now on. A
        conversation that goes on needs a new session id. Audited as ``session.end``."""
        if not by:
            raise ConfigError("ending a session needs an identity ('by')")
        if not isinstance(session_id, str) or not session_id:
            raise ConfigError(f"a session id is a non-empty string: {session_id!r}")
        self._flow.end(session_id)  # tracking flow or not: other kernels on the store may
        if self._audit is not None:
            ts = self._clock()
            self._audit.append({"kind": "session.end", "id": f"session:{session_id}:{ts}",
                                "ts": ts, "session": session_id, "by": by, "reason": reason})

    @property
    def flow_sessions_evicted(self) -> int:
        """Sessions whose provenance was dropped to stay within ``MAX_FLOW_SESSIONS``."""
        return self._flow.evicted

    # -- approvals ---------------------------------------------------------------------------
    def action_digest(self, action: Action) -> str:
        """The digest an approval is bound to: canonical tool, stage, arguments, agent, session."""
        return action_digest(action)

    def approve(self, approval_id: str, *, by: str, note: str = "") -> Approval:
        """Grant a pending approval (single use, only for the action it was created for)."""
        return self._approvals.decide(approval_id, True, by, note)

    def refuse(self, approval_id: str, *, by: str, note: str = "") -> Approval:
        return self._approvals.decide(approval_id, False, by, note)

    def pending_approvals(self) -> list[Approval]:
        return self._approvals.pending()

    def kill_hit(self, decision: Decision) -> str | None:
        """The kill flag (scope) that now covers the call ``decision`` allowed, if any: for
        callers that start work some time after the decision (async tools)."""
        flags = self._flags()
        return _kill_hit(flags, decision.agent, decision.session, decision.tool) if flags \
            else None

    def add_guard(self, guard: Any) -> None:
        """Register one more guard; it runs after those already registered."""
        self._guards = (*self._guards, guard)
        self._guard_names = (*self._guard_names, _name(guard))

    def reset_breaker(self, session_id: str, *, by: str, reason: str = "") -> None:
        """Re-open a session's tripped loop breaker and clear its repeat and failure counts."""
        if not by:
            raise ConfigError("resetting a loop breaker needs an identity ('by')")
        self._session_budgets.reset(session_id, self._clock() / 1e9)
        if self._audit is not None:
            ts = self._clock()
            self._audit.append({"kind": "breaker.reset", "id": f"breaker:{session_id}:{ts}",
                                "ts": ts, "session": session_id, "by": by, "reason": reason})

    def report_usage(self, session_id: str, *, cost: float = 0.0, tokens: int = 0) -> None:
        """Add usage the caller measured (model cost, tokens) to the session's budgets."""
        if not (isinstance(cost, int | float) and 0 <= cost < 1e12):
            raise ConfigError(f"cost must be a finite, non-negative number below 1e12: {cost!r}")
        if not (isinstance(tokens, int) and not isinstance(tokens, bool)
                and 0 <= tokens < 1 << 53):
            raise ConfigError(f"tokens must be a non-negative integer: {tokens!r}")
        self._session_budgets.add_usage(session_id, cost, tokens, self._clock() / 1e9)

    # -- audit --------------------------------------------------------------------------------
    def record_outcome(self, decision: Decision, status: str, *, error: str | None = None,
                       duration_ns: int | None = None) -> None:
        """Record what happened to an allowed call (succeeded | failed | exception)."""
        if status not in ("succeeded", "failed", "exception"):
            raise ConfigError(f"unknown outcome status {status!r}")
        if status != "succeeded" and self.policy.budgets.max_failures is not None:
            self._session_budgets.failed(decision.session, decision.tool, decision.args,
                                         self._clock() / 1e9, decision.id)
        if self._audit is not None:
            self._audit.append(_Outcome(decision, status, error, duration_ns, self._clock()))

    @property
    def audit(self) -> Any:
        return self._audit

    @property
    def checks_results(self) -> bool:
        """Whether the policy decides results: it has ``post_tool`` rules (or is Cedar). Callers
        then send every result through ``evaluate`` at ``post_tool``."""
        return self._checks_results

    @property
    def tracks_flow(self) -> bool:
        """Whether the kernel keeps provenance (a catalog was given or a rule reads flow facts).
        A result the policy does not decide must still reach ``label_result``."""
        return self._flow_on

    def label_result(self, decision: Decision, result: Any) -> Any:
        """Record the result of the call ``decision`` allowed, for a kernel that tracks flow but
        whose policy does not decide results: its labels (and ``injection`` signal) join the
        session's provenance; returns what the model may see (marked or quarantined as the
        catalog says). With ``post_tool`` rules, ``evaluate`` does this instead."""
        if not decision.allowed:  # a result the model may see exists only for an allowed call
            raise ConfigError(f"label_result needs a decision that allowed the call, not "
                              f"{decision.effect!r} ({decision.id})")
        if not self._flow_on:
            return result
        return self._flow.label_result(decision, result)

    @property
    def clock(self) -> Callable[[], int]:
        """The kernel's clock (ns since the epoch), as injected."""
        return self._clock

    @property
    def state(self) -> StateStore:
        return self._state

    def close(self) -> None:
        """Flush and close the audit log and the state store (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._audit is not None:
            self._audit.close()
        self._state.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _name(obj: object) -> str:
    return str(getattr(obj, "name", None) or getattr(obj, "__name__", type(obj).__name__))


def _kill_hit(flags: Mapping[str, str], agent: str, session: str, tool: str) -> str | None:
    for key in ("kill:all", f"kill:agent:{agent}", f"kill:session:{session}", f"kill:tool:{tool}"):
        if key in flags:
            return key.removeprefix("kill:")
    return None


def _open_audit(audit: Any, durable: bool) -> Any:
    if audit is False:
        return None
    if audit is not None and hasattr(audit, "append"):
        return audit
    from bastion.audit import AuditLog

    target = None if audit is None else os.fspath(audit) if isinstance(audit, str | Path) \
        else audit
    return AuditLog.open(target, durable=durable)
