"""OpenAI Agents SDK: tool guardrails that put tool calls under the kernel.

The SDK's tool guardrails can reject a call or its result but cannot change either, so
``Guard.tool`` also sets two other public fields of the ``FunctionTool`` it copies
(``needs_approval`` and ``on_invoke_tool``). For each call, in order:

1. ``needs_approval`` (``Guard.tool`` only) decides the ``pre_tool`` action first: a
   ``require_approval`` decision interrupts the run (``result.interruptions``); approve it in
   bastion (``kernel.approve``) and in the SDK (``state.approve``), then resume with the state.
2. The tool input guardrail decides the call (or takes the decision step 1 made): a deny becomes
   ``reject_content`` (the model gets the message as the tool's output), a stop raises the
   SDK's ``ToolInputGuardrailTripwireTriggered`` whose ``output.output_info`` is the Decision.
3. The tool's ``on_invoke_tool`` (``Guard.tool`` only) passes the kernel's arguments on, so a
   redaction reaches the tool. Where the arguments cannot be rewritten (MCP servers, a tool
   given only the guardrails) a call that needs redacting is denied instead.
4. The tool output guardrail decides the result: a deny or a redaction becomes
   ``reject_content`` carrying the denial message or the redacted result; a stop raises
   ``ToolOutputGuardrailTripwireTriggered``.

The gate never raises, so an error anywhere in deciding is a deny. A result with no decision
behind it (the input guardrail did not run) is withheld.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

try:
    from agents import (
        FunctionTool,
        RunContextWrapper,
        ToolGuardrailFunctionOutput,
        ToolInputGuardrail,
        ToolOutputGuardrail,
    )
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("bastion.adapters.openai_agents needs the OpenAI Agents SDK: "
                      "pip install 'bastion[openai-agents]'") from exc

from bastion.adapters._core import Pre, Source, ToolGate, parse_args
from bastion.kernel import Kernel

__all__ = ["Guard"]

SessionFrom = Callable[[RunContextWrapper[Any]], Mapping[str, Any]]
Invoke = Callable[[Any, str], Awaitable[Any]]


class Guard:
    """Governs function tools (``guard.tool(t)``) and MCP servers (``**guard.guardrails()``).

    ``agent``, ``session`` and ``context`` are mappings or zero-argument callables;
    ``session_from`` derives the session from the SDK's run context (e.g. from
    ``ctx.context``, the object passed to ``Runner.run(context=...)``).
    """

    def __init__(self, kernel: Kernel, *, agent: Source = None, session: Source = None,
                 context: Source = None, session_from: SessionFrom | None = None):
        self.gate = ToolGate(kernel, agent=agent, session=session, context=context)
        self.session_from = session_from
        # tool call id -> (tool, the arguments as the model sent them, the decision its call
        # runs under); an entry is used only for that same tool and those same arguments (a
        # left-over one, say after the tool's own guardrail refused the call, is ignored)
        self._calls: dict[str, tuple[str, str, Pre]] = {}
        self._schemas: dict[str, Any] = {}  # tool name -> its JSON schema of arguments
        self.input_guardrail = ToolInputGuardrail(self._input_fixed, name="bastion")
        self.output_guardrail = ToolOutputGuardrail(self._output, name="bastion")

    def guardrails(self) -> dict[str, list[Any]]:
        """Keyword arguments for an MCP server (or ``FunctionTool``) to put its tools under the
        kernel; arguments are not rewritten there and approvals are denies."""
        return {"tool_input_guardrails": [self.input_guardrail],
                "tool_output_guardrails": [self.output_guardrail]}

    def tool(self, tool: FunctionTool) -> FunctionTool:
        """A copy of ``tool`` under the kernel, with redaction and approval pauses."""
        governed = copy.copy(tool)
        inner, asks = governed.on_invoke_tool, tool.needs_approval
        self._schemas[tool.name] = tool.params_json_schema

        async def invoke(ctx: Any, arguments: str) -> Any:
            return await self._invoke(inner, ctx, arguments)

        async def needs_approval(ctx: RunContextWrapper[Any], params: dict[str, Any],
                                 call_id: str) -> bool:
            return await self._needs_approval(tool.name, asks, ctx, params, call_id)

        governed.on_invoke_tool = invoke
        governed.needs_approval = needs_approval
        governed.tool_input_guardrails = [*(tool.tool_input_guardrails or []),
                                          ToolInputGuardrail(self._input, name="bastion")]
        governed.tool_output_guardrails = [self.output_guardrail,
                                           *(tool.tool_output_guardrails or [])]
        return governed

    # -- hooks -----------------------------------------------------------------------------
    async def _needs_approval(self, name: str, asks: Any, ctx: RunContextWrapper[Any],
                              params: dict[str, Any], call_id: str) -> bool:
        pre = await self.gate.abefore(name, params, session=self._session(ctx),
                                      schema=self._schemas.get(name))
        if pre.pending is not None:
            return True  # decided again after the approval, when the call may run
        if pre.run and (asks if isinstance(asks, bool) else bool(await asks(ctx, params,
                                                                            call_id))):
            return True  # the tool's own approval policy asks a human too
        self._calls[call_id] = (name, _key(params), pre)  # the input guardrail acts on it
        return False

    async def _input_fixed(self, data: Any) -> ToolGuardrailFunctionOutput:
        return await self._input(data, rewrites=False)

    async def _input(self, data: Any, *, rewrites: bool = True) -> ToolGuardrailFunctionOutput:
        ctx = data.context
        pre = self._take(ctx, ctx.tool_arguments)
        if pre is None:
            pre = await self.gate.abefore(ctx.tool_name, ctx.tool_arguments,
                                          session=self._session(ctx),
                                          schema=self._schemas.get(ctx.tool_name))
        if pre.stop:
            return ToolGuardrailFunctionOutput.raise_exception(output_info=pre.decision)
        if not pre.run:
            return ToolGuardrailFunctionOutput.reject_content(pre.message, pre.decision)
        if not rewrites and pre.args != parse_args(ctx.tool_arguments):
            self.gate.failed(pre, RuntimeError("arguments need rewriting"))
            return ToolGuardrailFunctionOutput.reject_content(
                f"The tool call '{ctx.tool_name}' was denied: its arguments must be redacted, "
                f"which bastion cannot do for this tool. Decision {pre.decision.id}.",
                pre.decision)
        self._calls[ctx.tool_call_id] = (ctx.tool_name, _key(ctx.tool_arguments), pre)
        return ToolGuardrailFunctionOutput.allow(pre.decision)

    async def _invoke(self, inner: Invoke, ctx: Any, arguments: str) -> Any:
        entry = self._calls.get(ctx.tool_call_id)
        pre = entry[2] if entry is not None and entry[0] == ctx.tool_name else None
        if pre is None or not pre.run:
            return (f"The tool call '{ctx.tool_name}' was denied: bastion made no decision "
                    f"for it.")
        if pre.args != parse_args(arguments):
            arguments = json.dumps(pre.args)
        try:
            return await inner(ctx, arguments)
        except Exception as exc:
            self._calls.pop(ctx.tool_call_id, None)
            self.gate.failed(pre, exc)
            raise

    async def _output(self, data: Any) -> ToolGuardrailFunctionOutput:
        ctx = data.context
        entry = self._calls.pop(ctx.tool_call_id, None)
        pre = entry[2] if entry is not None and entry[0] == ctx.tool_name else None
        if pre is None or not pre.run:
            return ToolGuardrailFunctionOutput.reject_content(
                f"The result of tool '{ctx.tool_name}' was withheld: bastion made no decision "
                f"for the call.")
        post = await self.gate.aafter(pre, data.output)
        if post.stop:
            return ToolGuardrailFunctionOutput.raise_exception(output_info=post.decision)
        if not post.allowed:
            return ToolGuardrailFunctionOutput.reject_content(post.message, post.decision)
        if post.result != data.output:  # redacted: the model gets the redacted result
            return ToolGuardrailFunctionOutput.reject_content(_text(post.result), post.decision)
        return ToolGuardrailFunctionOutput.allow(post.decision)

    def _take(self, ctx: Any, arguments: Any) -> Pre | None:
        """The decision made for this very call (same tool, same arguments), if any."""
        entry = self._calls.pop(ctx.tool_call_id, None)
        if entry is None or entry[0] != ctx.tool_name or entry[1] != _key(arguments):
            return None
        return entry[2]

    def _session(self, ctx: RunContextWrapper[Any]) -> Source:
        return None if self.session_from is None else functools.partial(self.session_from, ctx)


def _key(arguments: Any) -> str:
    """The arguments as the model sent them (a JSON text or a parsed map), as one string."""
    try:
        return json.dumps(parse_args(arguments), sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(arguments)


def _text(result: Any) -> str:
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, default=str)
    except (TypeError, ValueError):
        return str(result)
