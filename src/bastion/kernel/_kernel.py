"""The kernel: the single enforcement point.

``Kernel.evaluate`` decides one ``Action`` in this order; the code below cites the steps.

1. Stamp the decision id and time once.
2. Validate the stage and canonicalise the tool name; an invalid one is denied.
3. Check the kill switch (flags in the state store) for the fleet, the agent, the session and the
   tool; an engaged switch denies with reason ``kill_switch``.
4. Run the registered guards (capability tokens, rings: facts from the layers above); then
   evaluate the compiled policy (pure; see ``bastion.policy``).
5. Resolve ``require_approval``: a presented, granted approval for this exact action's digest is
   consumed and allows; a registered approver callback decides now; otherwise a pending approval is
   created and its id returned.
6. Apply rate limits of the deciding rules and the per-session call budget (state store).
7. Apply redaction obligations to the arguments or the result.
8. Write one audit event. If it cannot be written the decision becomes a deny.

Any exception inside these steps ends in a deny that records the error: the kernel fails closed.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from bastion._canon import canonical_tool
from bastion._errors import ConfigError, PolicyWarning
from bastion.flow import EMPTY_CATALOG, ToolCatalog, load_catalog
from bastion.flow._results import has_handle
from bastion.kernel._approvals import Approvals, Approver
from bastion.kernel._budgets import FOREVER, SessionBudgets, rate_limited
from bastion.kernel._events import _deny, _Event
from bastion.kernel._flow import _COMPLETE, HISTORY_UNKNOWN, SESSION_ENDED, FlowTracker
from bastion.kernel._flowrules import flow_note
from bastion.kernel._operations import KernelOperations, _kill_hit, _name, _open_audit
from bastion.kernel._redact import redact
from bastion.kernel._types import EMPTY, Action, AgentFacts, Decision, Guard, _plain_map
from bastion.policy import (
    CompiledPolicy,
    Effect,
    Policy,
    Stage,
    Verdict,
    compile_policy,
    parse_policy,
)
from bastion.policy._cedar import CedarPolicy, load_any
from bastion.policy._eval import evaluate_tiers
from bastion.state import StateStore, open_store

_STAGES = {s.value: s for s in Stage}
_STAGE = {s: s.value for s in Stage}
_EFFECT: dict[Effect, Any] = {e: e.value for e in Effect}
_CODE = {True: "default", False: "policy"}
_ALLOW = Effect.ALLOW
_ALL_NAMES = frozenset(("tool", "args", "agent", "session", "context", "result", "now",
                        "tool_info"))
_TOOL_STAGES = (Stage.PRE_TOOL, Stage.POST_TOOL)
_FLOW_WORDS = ("arg_labels", "labels", "history")  # what makes a policy flow-aware
# decisions made before the guards ran: their events name no admitting guard
_BEFORE_GUARDS = frozenset({"invalid_stage", "missing_tool", "invalid_tool", "invalid_identity",
                            "invalid_args",
                            "kill_switch", "guard", "internal_error", "audit_unavailable"})


_DRAWN: weakref.WeakSet[Kernel] = weakref.WeakSet()  # kernels whose id prefix was drawn


def _draw_again() -> None:
    """In a forked child: every kernel that drew its decision-id prefix draws a new one."""
    for kernel in list(_DRAWN):
        kernel._prefix, kernel._ids = os.urandom(6).hex(), itertools.count(1)


os.register_at_fork(after_in_child=_draw_again)


class Kernel(KernelOperations):
    """Decides every action; thread-safe; also a context manager (``close`` on exit)."""

    def __init__(
        self,
        policy: Policy | CompiledPolicy | CedarPolicy,
        *,
        audit: Any = None,
        state: StateStore | None = None,
        agent_facts: AgentFacts | None = None,
        approver: Approver | None = None,
        guards: tuple[Guard, ...] | list[Guard] = (),
        catalog: ToolCatalog | None = None,
        approval_ttl_s: float = 900.0,
        clock: Callable[[], int] = time.time_ns,
        id_prefix: str | None = None,
        share_flow: bool = False,
    ):
        self._cedar = policy if isinstance(policy, CedarPolicy) else None
        if isinstance(policy, CedarPolicy):
            policy = policy.policy
        self.compiled = policy if isinstance(policy, CompiledPolicy) else compile_policy(policy)
        self.policy = self.compiled.policy
        self._audit = audit
        self._state = state if state is not None else open_store(None)
        self._facts = agent_facts
        self._guards = tuple(guards)
        self._guard_names = tuple(_name(g) for g in self._guards)
        self.catalog = catalog if catalog is not None else EMPTY_CATALOG
        self._clock = clock
        self._prefix = id_prefix if id_prefix is not None else os.urandom(6).hex()
        self._ids = itertools.count(1)
        if id_prefix is None:  # a forked worker draws its own: no two mint one decision id
            _DRAWN.add(self)
        used = frozenset().union(*(cr.variables for cr in self.compiled.rules))
        self._needs_agent_facts = "agent" in used
        # counting calls costs a state-store write per decision: only when something reads the
        # count (a condition naming "calls"; one that builds the key some other way finds it
        # missing, which fails closed) or a call budget needs it
        self._needs_calls = self.policy.budgets.session_calls is not None or (
            "session" in used and (self._cedar is not None or any(
                "calls" in (cr.rule.when or "") for cr in self.compiled.rules)))
        self._needs_now = "now" in used
        self._budgeted = self._needs_calls or self.policy.budgets.any
        self._needs_agent_facts |= self._cedar is not None
        # the agent facts a decision read, per thread, for its audit event
        self._seen = threading.local() if self._needs_agent_facts and agent_facts is not None \
            else None
        self._stateful = self._cedar is not None or self._budgeted \
            or any(cr.rule.limit for cr in self.compiled.rules) \
            or any(cr.rule.effect is Effect.REQUIRE_APPROVAL for cr in self.compiled.rules)
        self._durable_audit = bool(getattr(audit, "durable", False))
        self._approvals = Approvals(self._state, approver, approval_ttl_s, audit, clock)
        self._session_budgets = SessionBudgets(self._state, self.policy.budgets)
        self._flags = self._state.flags
        self._candidates = self.compiled.cache  # read-only here; the compiler fills it
        self._rules = {cr.rule.id: cr.rule for cr in self.compiled.rules}
        self._closed = False
        # information flow: tracked when a catalog is given or a rule reads flow facts, so
        # policies without either pay one attribute test per decision
        self._flow_on = catalog is not None or any(
            cr.rule.when and any(w in cr.rule.when for w in _FLOW_WORDS)
            for cr in self.compiled.rules)
        self._flow = FlowTracker.for_rules(self.catalog, self.compiled.rules, self._state,
                                           clock=lambda: self._clock() / 1e9, share=share_flow)
        self._needs_history = bool(self._flow.history_rules)
        self._checks_results = self._cedar is not None or any(
            cr.rule.stage is Stage.POST_TOOL for cr in self.compiled.rules)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_policy(cls, path: str | os.PathLike[str], **options: Any) -> Kernel:
        """Load a policy file (``.cedar``: Cedar, else YAML); ``audit``/``state`` take a path or
        URL and default to in memory; ``audit=False`` turns auditing off."""
        return cls._build(load_any(os.fspath(path)), **options)

    @classmethod
    def from_text(cls, text: str, *, format: str = "yaml", **options: Any) -> Kernel:
        """Like ``from_policy`` for policy text; ``format`` is ``yaml`` or ``cedar``."""
        if format == "cedar":
            return cls._build(CedarPolicy(text), **options)
        if format != "yaml":
            raise ConfigError(f"unknown policy format {format!r} (yaml or cedar)")
        return cls._build(parse_policy(text), **options)

    @classmethod
    def _build(cls, policy: Policy | CedarPolicy, *, audit: Any = None, state: Any = None,
               catalog: Any = None, durable: bool = False, **options: Any) -> Kernel:
        for text in getattr(policy, "warnings", ()):  # "default: allow", with its position
            warnings.warn(text, PolicyWarning, stacklevel=3)
        tools = catalog if isinstance(catalog, ToolCatalog) or catalog is None \
            else load_catalog(catalog)
        store = state if hasattr(state, "flags") else open_store(state)
        return cls(policy, audit=_open_audit(audit, durable), state=store, catalog=tools,
                   **options)

    # -- the decision -----------------------------------------------------------------------
    def evaluate(self, action: Action) -> Decision:
        """Decide ``action`` (steps 1-8 in the module docstring). Never raises for bad input."""
        ts = self._clock()  # step 1
        did = f"{self._prefix}-{next(self._ids):x}"
        if action.args is None:  # no arguments at all: the empty map
            action = action._replace(args=EMPTY)
        seen = self._seen
        if seen is not None:
            seen.facts = None
        try:
            decision = self._decide(action, did, ts)
        except Exception as exc:  # fail closed on anything unexpected
            decision = _deny(did, ts, action, self.compiled.digest, "internal_error",
                             errors=(f"internal error: {type(exc).__name__}: {exc}",))
        if self._flow_on:
            try:
                observed = self._flow.observe(action, decision)
                if observed.redacted and observed.args is not decision.args:
                    observed = self._redact_released(observed)  # handles were released
                decision = observed
            except Exception as exc:  # an unrecorded result could launder taint: fail closed
                decision = _deny(did, ts, action, self.compiled.digest, "internal_error",
                                 errors=(f"flow tracking failed: {type(exc).__name__}: {exc}",))
        audit = self._audit
        if audit is not None:  # step 8
            try:
                admitted = self._guard_names if self._guard_names and \
                    decision.code not in _BEFORE_GUARDS else ()
                audit.append(_Event(decision, action, admitted,
                                    seen.facts if seen is not None else None))
            except Exception as exc:
                if self._flow_on and decision.allowed and decision.stage == "pre_tool":
                    self._flow.unsure(decision.session)  # the call is in its history already
                decision = _deny(did, ts, action, self.compiled.digest, "audit_unavailable",
                                 errors=(f"audit log cannot be written: {exc}",))
        return decision

    def _redact_released(self, decision: Decision) -> Decision:
        """Apply the decision's redact obligations again, to arguments that quarantine handles
        were released into (what a handle stood for is redacted like any other argument)."""
        args = decision.args
        for ob in decision.obligations:
            kind, _, rule_id = ob.partition(":")
            rule = self._rules.get(rule_id) if kind == "redact" else None
            if rule is not None and args is not None:
                args = redact(dict(args), rule.redact, rule.redact_pattern)
        return decision._replace(args=args)

    async def aevaluate(self, action: Action) -> Decision:
        """``evaluate`` for event loops: when the decision may touch the state store (limits,
        budgets, approvals, flow facts in a shared store) or the audit log commits synchronously
        (``durable=True``), it runs in a worker thread so the loop never blocks on I/O."""
        if (self._stateful or action.approval is not None or self._durable_audit
                or (self._flow_on and self._flow.shares_store)):
            import asyncio

            return await asyncio.to_thread(self.evaluate, action)
        return self.evaluate(action)

    def _decide(self, action: Action, did: str, ts: int) -> Decision:
        stage = _STAGES.get(action.stage)  # step 2
        if stage is None:
            return _deny(did, ts, action, self.compiled.digest, "invalid_stage",
                         errors=(f"unknown stage {action.stage!r}",))
        raw = action.tool
        if raw is None or raw == "":
            if stage in _TOOL_STAGES:
                return _deny(did, ts, action, self.compiled.digest, "missing_tool",
                             errors=(f"a {stage.value} action needs a tool name",))
            tool = ""
        else:
            canon = canonical_tool(raw) if isinstance(raw, str) else None
            if canon is None:
                return _deny(did, ts, action, self.compiled.digest, "invalid_tool",
                             errors=(f"invalid tool name {raw!r}",))
            tool = canon
        agent, session = action.agent, action.session
        if (agent and type(agent) is not dict and not isinstance(agent, Mapping)) or \
                (session and type(session) is not dict and not isinstance(session, Mapping)):
            return _deny(did, ts, action, self.compiled.digest, "invalid_identity",
                         errors=("agent and session must be maps such as {'id': 'a1'}",), tool=tool)
        agent_id = agent.get("id", "") if agent else ""
        session_id = session.get("id", "") if session else ""
        if type(agent_id) is not str or type(session_id) is not str:
            return _deny(did, ts, action, self.compiled.digest, "invalid_identity",
                         errors=("agent and session ids must be strings",), tool=tool)
        if not isinstance(action.args, Mapping):  # no argument could be named, nor labelled
            return _deny(did, ts, action, self.compiled.digest, "invalid_args",
                         errors=("arguments must be a map of name to value, not "
                                 f"{type(action.args).__name__}",), tool=tool)
        flags = self._flags()  # step 3
        if flags:
            hit = _kill_hit(flags, agent_id, session_id, tool)
            if hit is not None:
                return _deny(did, ts, action, self.compiled.digest, "kill_switch",
                             reasons=(f"kill switch engaged ({hit})",), tool=tool)
        for guard in self._guards:
            try:
                refusal = guard(action, tool, agent_id)
            except Exception as exc:
                return _deny(did, ts, action, self.compiled.digest, "guard",
                             errors=(f"guard {_name(guard)} failed: {type(exc).__name__}: "
                                     f"{exc}",), tool=tool)
            if refusal is not None:
                return _deny(did, ts, action, self.compiled.digest, "guard",
                             reasons=(f"{_name(guard)}: {refusal}",), tool=tool)
        if self._cedar is not None:
            return self._decide_cedar(action, stage, tool, agent_id, session_id, did, ts)
        cands = self._candidates.get((stage, tool)) or self.compiled.candidates(stage, tool)
        verdict = cands.static
        if verdict is None:
            data = self._data(action, tool, agent_id, session_id, ts, cands.variables)
            if self._flow_on and self._flow.ended(session_id, data):
                return _deny(did, ts, action, self.compiled.digest, "session_ended",
                             errors=(SESSION_ENDED,), tool=tool)
            if self._flow_on and self._flow.history_unknown(data, cands):
                return _deny(did, ts, action, self.compiled.digest, "flow_incomplete",
                             errors=(HISTORY_UNKNOWN,), tool=tool)
            verdict = evaluate_tiers(self.policy.default, cands, agent_id, data)
            if verdict.effect is not _ALLOW and "arg_labels" in data:
                verdict = verdict._replace(reasons=(*verdict.reasons, flow_note(data)))
        effect = verdict.effect
        if (effect is _ALLOW and not verdict.limited and not verdict.obligations
                and not (self._budgeted and stage is Stage.PRE_TOOL)):
            return Decision(did, "allow", _STAGE[stage], tool, verdict.rule_ids, verdict.errors,
                            verdict.reasons, (), self.compiled.digest, None, action.args,
                            action.result, False, ts, _CODE[verdict.default_applied], agent_id,
                            session_id)
        return self._finish(action, verdict, stage, tool, agent_id, session_id, did, ts)

    def _decide_cedar(self, action: Action, stage: Stage, tool: str, agent_id: str,
                      session_id: str, did: str, ts: int) -> Decision:
        assert self._cedar is not None
        data = self._data(action, tool, agent_id, session_id, ts)
        if self._flow_on and self._flow.ended(session_id, data):
            return _deny(did, ts, action, self.compiled.digest, "session_ended",
                         errors=(SESSION_ENDED,), tool=tool)
        effect, ids, reasons, errors = self._cedar.decide(stage.value, tool, agent_id,
                                                          dict(data["agent"]), data)
        verdict = Verdict(effect, (), errors, (), not ids, ids, reasons, False)
        return self._finish(action, verdict, stage, tool, agent_id, session_id, did, ts)

    def _data(self, action: Action, tool: str, agent_id: str, session_id: str, ts: int,
              names: frozenset[str] = _ALL_NAMES) -> dict[str, Any]:
        """The CEL variables in ``names`` (only those: each costs time to build and convert)."""
        data: dict[str, Any] = {}
        if "args" in names:
            data["args"] = _plain_map(action.args)
        if "tool" in names:
            data["tool"] = tool
        if "agent" in names:
            agent: dict[str, Any] = {"id": agent_id}
            if self._needs_agent_facts and self._facts is not None:
                agent = {**self._facts(agent_id), "id": agent_id}
                if self._seen is not None:  # recorded in the decision's audit event
                    self._seen.facts = agent
            data["agent"] = agent
        # the arguments' labels are read before the session's: an end_session between the two
        # reads then shows in the session's labels (ended), never as forgotten provenance alone
        synced: Any = None  # shared provenance: replay what other workers recorded first
        if self._flow_on and self._flow.shares_facts and (
                "arg_labels" in names or "session" in names):
            missing = self._flow.sync(session_id)  # an empty set is missing facts too
            synced = _COMPLETE if missing is None else missing
        if "arg_labels" in names:
            data["arg_labels"] = self._flow.arg_labels(session_id, action.args)
        if "session" in names:
            session: dict[str, Any] = {"id": session_id, "labels": []}
            if self._needs_calls:
                session["calls"] = self._state.count(f"calls:{session_id}", FOREVER, ts / 1e9)
            if self._flow_on:
                session["labels"], history = self._flow.session_facts(
                    session_id, history=self._needs_history, missing=synced)
                if self._needs_history:  # 64 entries converted for CEL on every decision
                    session["history"] = history
            data["session"] = session
        if "context" in names:
            data["context"] = _plain_map(action.context)
        if "result" in names:
            data["result"] = action.result
        if "tool_info" in names:
            info = self.catalog.get(tool)
            data["tool_info"] = {"class": info.tool_class, "side_effects": info.side_effects,
                                 "sinks": list(info.sinks), "content": list(info.content),
                                 "declared": info.declared}
        if "now" in names:
            import datetime as dt

            data["now"] = dt.datetime.fromtimestamp(ts / 1e9, dt.UTC)
        return data

    def _finish(self, action: Action, verdict: Verdict, stage: Stage, tool: str,
                agent_id: str, session_id: str, did: str, ts: int) -> Decision:
        effect = verdict.effect
        reasons = list(verdict.reasons)
        approval_id = None
        code = _CODE[verdict.default_applied]
        if effect is Effect.REQUIRE_APPROVAL:  # step 5
            code = "approval"
            effect, approval_id, note = self._approvals.resolve(action, tool, agent_id,
                                                                session_id, did, ts)
            reasons.append(note)
        if effect is Effect.ALLOW:  # step 6
            limited = self._limits(action, verdict, stage, tool, agent_id, session_id, ts / 1e9,
                                   did)
            if limited is not None:
                effect, code = Effect.DENY, limited[0]
                reasons.insert(0, limited[1])
        args, result, redacted, obligations = action.args, action.result, False, []
        if effect is Effect.ALLOW and verdict.obligations:  # step 7
            for cr in verdict.obligations:
                obligations.append(f"{cr.rule.effect.value}:{cr.rule.id}")
                if cr.rule.effect is Effect.REDACT:
                    redacted = True
                    if stage is Stage.POST_TOOL:
                        result = redact(result, cr.rule.redact, cr.rule.redact_pattern)
                    elif not (stage is Stage.PRE_TOOL and self._flow_on and has_handle(args)):
                        args = redact(dict(args), cr.rule.redact, cr.rule.redact_pattern)
                    # else: after the call's handles are released (a pattern must not cut one)
        return Decision(did, _EFFECT[effect], _STAGE[stage], tool, verdict.rule_ids,
                        verdict.errors, tuple(reasons), tuple(obligations),
                        self.compiled.digest, approval_id, args, result, redacted, ts, code,
                        agent_id, session_id)

    # -- limits and budgets --------------------------------------------------------------------
    def _limits(self, action: Action, verdict: Verdict, stage: Stage, tool: str, agent_id: str,
                session_id: str, ts: float, did: str = "") -> tuple[str, str] | None:
        limited = rate_limited(self._state, verdict.rules, tool, agent_id, session_id, ts)
        if limited is not None:
            return limited
        if stage is Stage.PRE_TOOL and self._budgeted:
            return self._session_budgets.check(action, tool, session_id, ts, did)
        return None
