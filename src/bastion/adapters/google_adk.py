"""bastion for Google ADK (``google-adk`` >= 2): a plugin on the runner's tool callbacks.

``BastionPlugin(kernel)`` goes in ``App(..., plugins=[...])`` and
governs every tool of every agent the runner drives. For one agent only, pass its methods as
``LlmAgent(before_tool_callback=p.before_tool, after_tool_callback=p.after_tool)``.

1. ``before_tool_callback`` asks the kernel. Allow returns ``None`` after writing the kernel's
   arguments into ``tool_args`` in place (ADK calls the tool with that dict, so redactions
   reach it). Deny returns ``{"error": message}``: ADK skips the tool and the model reads that
   as the function response.
2. ``require_approval`` pauses with ADK's tool confirmation (``tool_context.request_confirmation``
   with the approval id in the payload): the run ends with an ``adk_request_confirmation``
   call. Grant the approval in bastion (``kernel.approve(id, by=...)``), then answer the
   confirmation; ADK re-runs the call, this plugin presents the granted approval and the tool
   runs. A confirmation answered ``confirmed: false`` denies.
3. ``after_tool_callback`` decides the result; a redaction or a denial replaces it.
4. A decision that ends the run (kill switch, budget) answers the call with the denial, sets
   ``skip_summarization`` and ``escalate`` on the call's actions (how ADK's own ``exit_loop``
   ends a loop), and ``before_model_callback`` refuses every later model call of the
   invocation, so the agent gets no further turn.

``agent``, ``session`` and ``context`` are mappings or zero-argument callables;
``agent_from``/``session_from`` derive them from the ``ToolContext`` instead. Without either,
the agent is ``{"id": tool_context.agent_name}`` and the session
``{"id": tool_context.session.id}``. An error in the kernel or in these callables denies the
call; ADK re-raises an exception from a plugin as a ``RuntimeError`` that ends the run, so
nothing runs ungoverned either way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from google.adk.models.llm_response import LlmResponse
from google.adk.plugins.base_plugin import BasePlugin
from google.genai import types

from bastion.adapters._core import Post, Pre, Source, ToolGate
from bastion.kernel import Kernel

From = Callable[[Any], Mapping[str, Any]]  # takes the ADK ToolContext


class BastionPlugin(BasePlugin):  # type: ignore[misc]  # BasePlugin is Any without the extra
    """Decides each tool call of an ADK runner with a bastion kernel."""

    def __init__(self, kernel: Kernel, *, agent: Source = None, session: Source = None,
                 context: Source = None, agent_from: From | None = None,
                 session_from: From | None = None, name: str = "bastion"):
        super().__init__(name=name)
        self.gate = ToolGate(kernel, agent=agent, session=session, context=context)
        if agent is None and agent_from is None:
            agent_from = _agent_name
        if session is None and session_from is None:
            session_from = _session_id
        self._agent_from, self._session_from = agent_from, session_from
        # the ToolContext of a call -> its decision: one object per call, whatever id the
        # model gave it (two calls sharing an id must not share a decision); the context is
        # held too, so its id is not reused while the entry lives
        self._pending: dict[int, tuple[Any, Pre]] = {}
        self._answered: dict[int, Any] = {}  # calls bastion answered before they ran
        self._stopped: dict[str, str] = {}  # invocation id -> why it was stopped

    # -- plugin callbacks ------------------------------------------------------------------
    async def before_tool_callback(self, *, tool: Any, tool_args: dict[str, Any],
                                   tool_context: Any) -> dict[str, Any] | None:
        confirmation = tool_context.tool_confirmation
        if confirmation is not None and not confirmation.confirmed:
            self._answer(tool_context)
            return {"error": f"The tool call '{tool.name}' was rejected by the user."}
        if getattr(tool, "include_plugins", True) is False:
            # an AgentTool that runs its sub-agent on a Runner without this plugin: the
            # sub-agent's tools would run with no decision, so the call itself is refused
            pre = self.gate._broken(tool.name, "pre_tool", ValueError(
                "AgentTool(include_plugins=False) runs its sub-agent without bastion's plugin, "
                "so its tool calls could not be governed"))
        else:
            pre = await self.gate.abefore(
                tool.name, tool_args, agent=_bind(self._agent_from, tool_context),
                session=_bind(self._session_from, tool_context))
        if pre.run:
            if pre.args != tool_args:
                tool_args.clear()
                tool_args.update(pre.args)
            self._pending[id(tool_context)] = (tool_context, pre)
            return None
        self._answer(tool_context)
        if pre.stop:
            self._stop(tool_context, pre.message)
        elif pre.pending is not None and confirmation is None:
            # pause as ADK's own confirmation gate does: no model turn until the answer
            tool_context.request_confirmation(hint=pre.message,
                                              payload={"approval_id": pre.pending})
            tool_context.actions.skip_summarization = True
        return {"error": pre.message}

    def _answer(self, tool_context: Any) -> None:
        """Bastion answered this call before it ran (bounded: ADK may not report back)."""
        self._answered[id(tool_context)] = tool_context
        while len(self._answered) > _MAX_ANSWERED:
            del self._answered[next(iter(self._answered))]

    async def after_tool_callback(self, *, tool: Any, tool_args: dict[str, Any],
                                  tool_context: Any, result: Any) -> dict[str, Any] | None:
        entry = self._pending.pop(id(tool_context), None)
        if entry is None or entry[0] is not tool_context:
            if self._answered.pop(id(tool_context), None) is tool_context:
                return None  # bastion answered it before it ran: that answer is the result
            # a result of a call bastion holds no decision for: never shown unchecked
            return {"error": f"The result of tool '{tool.name}' was withheld: bastion did not "
                             "decide the call."}
        pre = entry[1]
        post = await self.gate.aafter(pre, result)
        if post.stop:
            self._stop(tool_context, post.message)
        return _replacement(post, result)

    async def on_tool_error_callback(self, *, tool: Any, tool_args: dict[str, Any],
                                     tool_context: Any, error: Exception) -> None:
        entry = self._pending.pop(id(tool_context), None)
        if entry is not None and entry[0] is tool_context:
            self.gate.failed(entry[1], error)
        return None

    async def before_model_callback(self, *, callback_context: Any,
                                    llm_request: Any) -> LlmResponse | None:
        why = self._stopped.get(callback_context.invocation_id)
        if why is None:
            return None
        return LlmResponse(content=types.Content(role="model", parts=[types.Part(text=why)]))

    async def after_run_callback(self, *, invocation_context: Any) -> None:
        self._stopped.pop(invocation_context.invocation_id, None)

    # -- agent-level callbacks (LlmAgent(before_tool_callback=..., after_tool_callback=...)) -
    async def before_tool(self, tool: Any, args: dict[str, Any],
                          tool_context: Any) -> dict[str, Any] | None:
        return await self.before_tool_callback(tool=tool, tool_args=args,
                                               tool_context=tool_context)

    async def after_tool(self, tool: Any, args: dict[str, Any], tool_context: Any,
                         tool_response: Any) -> dict[str, Any] | None:
        return await self.after_tool_callback(tool=tool, tool_args=args,
                                              tool_context=tool_context, result=tool_response)

    # -- internals -------------------------------------------------------------------------
    def _stop(self, tool_context: Any, why: str) -> None:
        tool_context.actions.skip_summarization = True
        tool_context.actions.escalate = True
        self._stopped[tool_context.invocation_id] = why


def _bind(derive: From | None, tool_context: Any) -> Source:
    """A zero-argument source for the gate, which calls it: an error in it denies the call."""
    return None if derive is None else functools.partial(derive, tool_context)


def _agent_name(tool_context: Any) -> Mapping[str, Any]:
    return {"id": tool_context.agent_name}


def _session_id(tool_context: Any) -> Mapping[str, Any]:
    return {"id": tool_context.session.id}


_MAX_ANSWERED = 10_000


def _replacement(post: Post, result: Any) -> dict[str, Any] | None:
    """What ADK should use instead of ``result`` (``None``: the result as it is)."""
    if not post.allowed:
        return {"error": post.message}
    if post.result == result:
        return None
    return post.result if isinstance(post.result, dict) else {"result": post.result}
