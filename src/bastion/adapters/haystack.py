"""bastion for Haystack (``haystack-ai`` >= 3): two Agent hooks, one on each side of the tools.

``hooks(kernel)`` returns ``{"before_tool": [...], "after_tool": [...]}`` for
``Agent(hooks=...)``. Both run on the Agent's live ``State`` in its sync and async loops.

1. ``before_tool`` decides each pending tool call through Haystack's human-in-the-loop
   machinery (a ``ConfirmationHook`` whose strategy is the kernel): allow is
   ``ToolExecutionDecision(execute=True)`` with ``final_tool_params`` = the kernel's arguments
   (redactions reach the tool); anything else is ``execute=False`` with the denial as feedback,
   which Haystack turns into an error tool result the model reads on its next turn. A
   ``require_approval`` is such a deny naming the approval id (Haystack agents cannot pause on
   a pending approval); once granted, the same call retried in the same session runs.
2. ``after_tool`` decides each result of a call the kernel let run and, when the kernel
   redacts or denies it, replaces that tool message before the model sees it.
3. A decision that ends the run (kill switch, budget) sets Haystack's ``stop_run``: the Agent
   stops before its next LLM call with ``exit_reason`` ``"bastion:<code>"``.

``agent``, ``session`` and ``context`` are mappings or zero-argument callables;
``session_from`` derives the session from the run's ``hook_context`` instead
(``agent.run(..., hook_context={"session_id": ...})``). An exception in the kernel or in these
callables denies the call (ToolGate); one in the hook itself propagates out of ``Agent.run``
(Haystack does not catch hook errors), so no tool runs.
"""

from __future__ import annotations

import contextvars
import json
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from haystack.components.agents.state.state_utils import replace_values
from haystack.dataclasses import ChatMessage
from haystack.hooks.human_in_the_loop import ConfirmationHook, ToolExecutionDecision

from bastion.adapters._core import Post, Pre, Source, ToolGate
from bastion.kernel import Kernel

SessionFrom = Callable[[dict[str, Any]], Mapping[str, Any]]
Step = list[tuple[str | None, str, Pre]]  # (tool call id, tool name, decision) per pending call

_STEP: contextvars.ContextVar[Step | None] = contextvars.ContextVar("bastion_haystack_step",
                                                                    default=None)


def hooks(kernel: Kernel, *, agent: Source = None, session: Source = None,
          context: Source = None, session_from: SessionFrom | None = None
          ) -> dict[str, list[Any]]:
    """The hooks to pass as ``Agent(hooks=...)``; keep bastion last in ``before_tool`` and
    first in ``after_tool`` when adding hooks of your own."""
    gate = ToolGate(kernel, agent=agent, session=session, context=context)
    pending: weakref.WeakKeyDictionary[Any, Step] = weakref.WeakKeyDictionary()
    return {"before_tool": [BeforeTool(gate, session_from, pending)],
            "after_tool": [AfterTool(gate, pending)]}


class _Strategy:
    """A Haystack ``ConfirmationStrategy`` that asks the kernel instead of a human."""

    def __init__(self, gate: ToolGate, session_from: SessionFrom | None):
        self._gate, self._session_from = gate, session_from

    def run(self, *, tool_name: str, tool_description: str, tool_params: dict[str, Any],
            tool_call_id: str | None = None,
            confirmation_strategy_context: dict[str, Any] | None = None) -> Any:
        pre = self._gate.before(tool_name, tool_params,
                                session=self._source(confirmation_strategy_context))
        return self._decision(tool_name, tool_call_id, pre)

    async def run_async(self, *, tool_name: str, tool_description: str,
                        tool_params: dict[str, Any], tool_call_id: str | None = None,
                        confirmation_strategy_context: dict[str, Any] | None = None) -> Any:
        pre = await self._gate.abefore(tool_name, tool_params,
                                       session=self._source(confirmation_strategy_context))
        return self._decision(tool_name, tool_call_id, pre)

    def _source(self, hook_context: dict[str, Any] | None) -> Source:
        derive = self._session_from
        if derive is None:
            return None
        return lambda: derive(hook_context or {})  # called inside the gate: errors deny

    @staticmethod
    def _decision(tool: str, call_id: str | None, pre: Pre) -> Any:
        step = _STEP.get()
        if step is None:  # only BeforeTool may ask: it keeps the decisions for AfterTool
            return ToolExecutionDecision(tool_name=tool, execute=False, tool_call_id=call_id,
                                         feedback="bastion: tool call outside its hook denied")
        step.append((call_id, tool, pre))
        if not pre.run:
            return ToolExecutionDecision(tool_name=tool, execute=False, tool_call_id=call_id,
                                         feedback=pre.message)
        return ToolExecutionDecision(
            tool_name=tool, execute=True, tool_call_id=call_id, final_tool_params=pre.args,
            feedback=f"bastion rewrote the arguments of '{tool}' (decision {pre.decision.id}).")


class BeforeTool:
    """``before_tool``: the kernel decides every pending tool call."""

    allowed_hook_points = ("before_tool",)

    def __init__(self, gate: ToolGate, session_from: SessionFrom | None,
                 pending: weakref.WeakKeyDictionary[Any, Step]):
        strategy = _Strategy(gate, session_from)
        self._confirm = ConfirmationHook(confirmation_strategies={"*": strategy})
        self._pending = pending

    def run(self, state: Any) -> None:
        token = _STEP.set([])
        try:
            self._confirm.run(state)
            self._keep(state, _STEP.get() or [])
        finally:
            _STEP.reset(token)

    async def run_async(self, state: Any) -> None:
        token = _STEP.set([])
        try:
            await self._confirm.run_async(state)
            self._keep(state, _STEP.get() or [])
        finally:
            _STEP.reset(token)

    def _keep(self, state: Any, step: Step) -> None:
        self._pending[state] = [s for s in step if s[2].run]
        stopped = next((pre for _, _, pre in step if pre.stop), None)
        if stopped is not None:
            state.set("stop_run", f"bastion:{stopped.decision.code}")


class AfterTool:
    """``after_tool``: the kernel decides each result; redacted or denied ones are replaced."""

    allowed_hook_points = ("after_tool",)

    def __init__(self, gate: ToolGate, pending: weakref.WeakKeyDictionary[Any, Step]):
        self._gate, self._pending = gate, pending

    def run(self, state: Any) -> None:
        self._replace(state, [(i, self._gate.after(pre, _result(msg)))
                              for i, msg, pre in self._results(state)])

    async def run_async(self, state: Any) -> None:
        self._replace(state, [(i, await self._gate.aafter(pre, _result(msg)))
                              for i, msg, pre in self._results(state)])

    def _results(self, state: Any) -> list[tuple[int, Any, Pre]]:
        """This step's tool messages with the decisions that let them run. A call that failed
        is recorded as such; its error text is the tool's own and is not checked."""
        step = self._pending.pop(state, [])
        messages = state.data.get("messages") or []
        out: list[tuple[int, Any, Pre]] = []
        i = len(messages) - 1
        while i >= 0 and messages[i].tool_call_result is not None:
            res = messages[i].tool_call_result
            match = next((s for s in step if _same(s, res.origin)), None)
            if match is not None:
                step.remove(match)
                if res.error:
                    self._gate.failed(match[2], RuntimeError(str(res.result)[:500]))
                else:
                    out.append((i, messages[i], match[2]))
            i -= 1
        return out

    def _replace(self, state: Any, checked: list[tuple[int, Post]]) -> None:
        messages = list(state.data.get("messages") or [])
        changed, stop = False, None
        for i, post in checked:
            if not post.allowed or post.result != _result(messages[i]):
                messages[i] = ChatMessage.from_tool(
                    tool_result=_text(post.result), origin=messages[i].tool_call_result.origin,
                    error=not post.allowed, meta=messages[i].meta)
                changed = True
            if post.stop and post.decision is not None:
                stop = f"bastion:{post.decision.code}"
        if changed:
            state.set("messages", messages, handler_override=replace_values)
        if stop is not None:
            state.set("stop_run", stop)


def _same(step: tuple[str | None, str, Pre], origin: Any) -> bool:
    call_id, tool, pre = step
    if call_id is not None:
        return bool(origin.id == call_id)
    return bool(origin.tool_name == tool and origin.arguments == pre.args)


def _result(message: Any) -> Any:
    """A tool message's result as the kernel sees it: the text, or the list of its parts."""
    result = message.tool_call_result.result
    if isinstance(result, str):
        return result
    return [getattr(part, "text", None) or f"[{type(part).__name__}]" for part in result]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
