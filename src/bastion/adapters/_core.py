"""What every framework adapter shares: one kernel call before a tool runs, one after, and the
translation of a ``Decision`` into what a framework can act on.

An adapter asks ``ToolGate.before(tool, args)`` in the framework's pre-tool hook and gets a
``Pre``: ``run`` (call the tool with ``pre.args`` — redacted or otherwise rewritten by the
kernel), or not, with ``message`` for the model and ``stop`` when the whole run must end (kill
switch, a tripped loop breaker, an exhausted budget). ``pending`` names an approval the
framework may pause on. After the tool ran, ``ToolGate.after(pre, result)`` gives a ``Post``
whose ``result`` is what the model may see (the original, a redaction, a marked or quarantined
result, or the denial message).

Both fail closed: an exception anywhere in the gate (bad arguments, a broken fact provider,
an error in the kernel's caller) becomes a deny with the reason, never a call that runs
ungoverned. The gate never raises, so a framework that swallows hook exceptions still sees
a deny; ``check`` and ``check_result`` raise ``GovernanceDenied``/``RunStopped`` for
frameworks whose hooks stop work by raising.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from bastion._errors import GovernanceDenied
from bastion.kernel import Action, Decision, Kernel
from bastion.kernel._events import _Event

Source = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None

#: decision codes after which the run as a whole must stop, not only the one call
STOP_CODES = frozenset({"kill_switch", "budget"})
#: calls awaiting a human that one gate remembers (oldest forgotten first)
MAX_WAITING = 1_024


class RunStopped(GovernanceDenied):
    """The run must end: the kill switch is engaged or a session budget or breaker tripped."""

    code = "run_stopped"


class Pre(NamedTuple):
    """The gate's answer before a tool runs."""

    run: bool
    args: dict[str, Any]
    message: str
    decision: Decision
    stop: bool = False
    pending: str | None = None
    started: int = 0
    context: Mapping[str, Any] | None = None  # the context the call was decided with


class Post(NamedTuple):
    """The gate's answer after a tool ran: ``result`` is what the model may see."""

    allowed: bool
    result: Any
    message: str
    decision: Decision | None
    stop: bool = False


class ToolGate:
    """Decides tool calls for one framework integration.

    ``agent``, ``session`` and ``context`` are mappings or zero-argument callables (read per
    call); ``before``/``after`` also take per-call overrides for frameworks that carry run
    state (a run id, a thread id). ``stop_codes`` lists the decision codes that end the run.
    """

    def __init__(self, kernel: Kernel, *, agent: Source = None, session: Source = None,
                 context: Source = None, stop_codes: frozenset[str] = STOP_CODES):
        self.kernel = kernel
        self._agent, self._session, self._context = agent, session, context
        self.stop_codes = stop_codes
        # action digest -> approval id awaiting a human (bounded: the model chooses the calls)
        self._approvals: OrderedDict[str, str] = OrderedDict()

    # -- before the tool -------------------------------------------------------------------
    def before(self, tool: str, args: Any, *, agent: Source = None, session: Source = None,
               context: Source = None, schema: Any = None) -> Pre:
        """Decide a ``pre_tool`` action; never raises. With ``schema`` (the tool's JSON schema
        of its arguments), an argument whose JSON type is not one the schema declares is
        denied: the framework would convert it after the decision (``"true"`` to ``True``), so
        the tool would get a value the policy never saw."""
        try:
            mismatch = schema_mismatch(args, schema)
            if mismatch is not None:
                raise TypeError(mismatch)
            action = self._action(tool, args, agent, session, context)
            return self._pre(action, self.kernel.evaluate(action))
        except Exception as exc:  # fail closed: an ungoverned call must not run
            return self._broken(tool, "pre_tool", exc)

    async def abefore(self, tool: str, args: Any, *, agent: Source = None,
                      session: Source = None, context: Source = None, schema: Any = None) -> Pre:
        """``before`` for event loops (state and durable audit I/O leave the loop)."""
        try:
            mismatch = schema_mismatch(args, schema)
            if mismatch is not None:
                raise TypeError(mismatch)
            action = self._action(tool, args, agent, session, context)
            return self._pre(action, await self.kernel.aevaluate(action))
        except Exception as exc:
            return self._broken(tool, "pre_tool", exc)

    def check(self, tool: str, args: Any, **over: Source) -> Pre:
        """``before`` that raises ``RunStopped``/``GovernanceDenied`` unless the call may run."""
        return _raise_unless_run(self.before(tool, args, **over))

    async def acheck(self, tool: str, args: Any, **over: Source) -> Pre:
        return _raise_unless_run(await self.abefore(tool, args, **over))

    # -- after the tool --------------------------------------------------------------------
    def after(self, pre: Pre, result: Any) -> Post:
        """Decide the result of a call ``before`` let run, and record its outcome. The result
        of a call ``before`` did not let run is never shown: the denial is."""
        if not pre.run:
            return _not_run(pre)
        try:
            if not self.kernel.checks_results:
                return self._unchecked(pre, result)
            return self._post(pre, self.kernel.evaluate(self._result_action(pre, result)))
        except Exception as exc:
            return self._after_broken(pre, exc)

    async def aafter(self, pre: Pre, result: Any) -> Post:
        if not pre.run:
            return _not_run(pre)
        try:
            if not self.kernel.checks_results:
                return self._unchecked(pre, result)
            action = self._result_action(pre, result)
            return self._post(pre, await self.kernel.aevaluate(action))
        except Exception as exc:
            return self._after_broken(pre, exc)

    def _after_broken(self, pre: Pre, exc: Exception) -> Post:
        """The result is withheld; recording the outcome is best effort (it may be what broke)."""
        with contextlib.suppress(Exception):
            self._outcome(pre, "failed", f"result check failed: {exc}")
        broken = self._broken(pre.decision.tool, "post_tool", exc)
        return Post(False, broken.message, broken.message, broken.decision)

    def check_result(self, pre: Pre, result: Any) -> Any:
        """``after`` that returns the result the model may see, or raises when it is denied."""
        post = self.after(pre, result)
        if post.allowed:
            return post.result
        assert post.decision is not None
        raise (RunStopped if post.stop else GovernanceDenied)(post.decision)

    def failed(self, pre: Pre, exc: BaseException) -> None:
        """Record that an allowed tool raised (feeds the failure budget and the audit log)."""
        self._outcome(pre, "exception", f"{type(exc).__name__}: {exc}")

    # -- internals -------------------------------------------------------------------------
    def _action(self, tool: str, args: Any, agent: Source, session: Source,
                context: Source) -> Action:
        parsed = parse_args(args)
        action = Action(tool, parsed, "pre_tool", _get(agent or self._agent),
                        _get(session or self._session), _get(context or self._context))
        if self._approvals:  # a retried call presents the approval it was waiting for
            dg = self.kernel.action_digest(action)
            waiting = self._approvals.get(dg)
            if waiting is not None:
                action = action._replace(approval=waiting)
        return action

    def _pre(self, action: Action, decision: Decision) -> Pre:
        if decision.effect == "allow":
            if decision.approval_id is not None:
                self._approvals.pop(self.kernel.action_digest(action._replace(approval=None)),
                                    None)
            args = dict(decision.args) if decision.args is not None else dict(action.args)
            return Pre(True, args, "", decision, started=time.perf_counter_ns(),
                       context=action.context)
        pending = None
        if action.approval is not None and not self._still_pending(action.approval):
            # refused, expired or used: the next retry asks for a new approval
            self._approvals.pop(self.kernel.action_digest(action._replace(approval=None)), None)
        if decision.effect == "require_approval" and decision.approval_id is not None:
            pending = decision.approval_id
            self._approvals[self.kernel.action_digest(action._replace(approval=None))] = pending
            while len(self._approvals) > MAX_WAITING:
                self._approvals.popitem(last=False)
        return Pre(False, {}, denial_message(decision), decision,
                   decision.code in self.stop_codes, pending)

    def _still_pending(self, approval_id: str) -> bool:
        found = self.kernel.state.get_approval(approval_id)
        # a granted approval not yet used (the call was denied for another reason, e.g. a rate
        # limit) is kept for the next retry
        return found is not None and found.status in ("pending", "granted") \
            and found.expires > self.kernel.clock() / 1e9

    def _result_action(self, pre: Pre, result: Any) -> Action:
        d = pre.decision
        context = pre.context if pre.context is not None else _get(self._context)
        return Action(d.tool, pre.args, "post_tool", {"id": d.agent}, {"id": d.session},
                      context, result)

    def _unchecked(self, pre: Pre, result: Any) -> Post:
        """A result the policy does not decide: labelled (and marked or quarantined) when the
        kernel tracks flow, then passed on."""
        shown = self.kernel.label_result(pre.decision, result)
        self._outcome(pre, "succeeded")
        return Post(True, shown, "", None)

    def _post(self, pre: Pre, decision: Decision) -> Post:
        if decision.allowed:
            self._outcome(pre, "succeeded")
            return Post(True, decision.result, "", decision)
        self._outcome(pre, "failed", "result denied")
        message = denial_message(decision)
        return Post(False, message, message, decision, decision.code in self.stop_codes)

    def _broken(self, tool: Any, stage: str, exc: Exception) -> Pre:
        """The deny reported when no decision could be reached; audited when possible."""
        error = f"adapter error: {type(exc).__name__}: {exc}"
        decision = Decision(f"adapter-{next(_BROKEN)}", "deny", stage, str(tool)[:200],
                            errors=(error,), ts_ns=time.time_ns(), code="internal_error")
        audit = getattr(self.kernel, "audit", None)
        if audit is not None:
            with contextlib.suppress(Exception):
                audit.append(_Event(decision, Action(decision.tool, stage=stage)))
        return Pre(False, {}, f"The tool call '{decision.tool}' was denied: bastion could not "
                              f"decide it ({error}).", decision)

    def _outcome(self, pre: Pre, status: str, error: str | None = None) -> None:
        if pre.run:
            self.kernel.record_outcome(pre.decision, status, error=error,
                                       duration_ns=time.perf_counter_ns() - pre.started)


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string",
               list: "array", dict: "object", type(None): "null"}


def schema_mismatch(args: Any, schema: Any) -> str | None:
    """Why ``args`` (a call's arguments as the model sent them) do not have the JSON types
    ``schema`` declares for them (top-level properties with a ``type``, or ``anyOf``/``oneOf``
    of such), or ``None``. Properties with no declared type are not judged."""
    if not isinstance(schema, Mapping) or not isinstance(args, Mapping):
        return None
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return None
    for name, value in args.items():
        declared = _declared(props.get(name))
        if not declared:
            continue
        kind = _JSON_TYPES.get(type(value))
        ok = kind in declared or (kind == "integer" and "number" in declared)
        if not ok:
            return (f"argument {name!r} is {kind or type(value).__name__}, but the tool "
                    f"declares {' or '.join(sorted(declared))}")
    return None


def _declared(prop: Any) -> set[str]:
    if not isinstance(prop, Mapping):
        return set()
    kind = prop.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list) and all(isinstance(k, str) for k in kind):
        return set(kind)
    for key in ("anyOf", "oneOf"):
        options = prop.get(key)
        if isinstance(options, list):
            found = [_declared(o) for o in options]
            if found and all(found):  # every option typed: the union of them
                return set().union(*found)
    return set()


def parse_args(args: Any) -> dict[str, Any]:
    """A tool call's arguments as a dict: a mapping as is, a JSON object string decoded (an
    empty string is no arguments); anything else is an error (the call is then denied)."""
    if args is None:
        return {}
    if isinstance(args, Mapping):
        return dict(args)
    if isinstance(args, str | bytes):
        if not args.strip():
            return {}
        value = json.loads(args)
        if isinstance(value, dict):
            return value
        raise ValueError(f"tool arguments must be a JSON object, not {type(value).__name__}")
    raise TypeError(f"tool arguments must be a mapping or a JSON object, not "
                    f"{type(args).__name__}")


def denial_message(decision: Decision) -> str:
    """The text a model sees when its call is not allowed (tool, why, decision id)."""
    why = "; ".join(decision.reasons) or "; ".join(decision.errors) or decision.code
    if decision.effect == "require_approval":
        return (f"Tool call '{decision.tool}' needs human approval ({why}). It did not run. "
                f"Approval id: {decision.approval_id}. Decision {decision.id}.")
    if decision.code in STOP_CODES:
        return f"The run was stopped by bastion ({why}). Decision {decision.id}."
    stage = "result of tool" if decision.stage == "post_tool" else "tool call"
    return f"The {stage} '{decision.tool}' was denied by policy: {why}. Decision {decision.id}."


def _get(source: Source) -> Mapping[str, Any]:
    if source is None:
        return {}
    return source() if callable(source) else source


_BROKEN = iter(range(1, 1 << 62))


def _not_run(pre: Pre) -> Post:
    message = pre.message or denial_message(pre.decision)
    return Post(False, message, message, pre.decision, pre.stop)


def _raise_unless_run(pre: Pre) -> Pre:
    if pre.run:
        return pre
    raise (RunStopped if pre.stop else GovernanceDenied)(pre.decision)
