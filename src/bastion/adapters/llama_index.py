"""LlamaIndex: every tool call decided by a governed tool proxy.

``GovernedTool`` wraps any LlamaIndex tool and keeps its ``metadata``, so the LLM sees the same
name and schema; agents (``FunctionAgent``, ``ReActAgent``, ``AgentWorkflow``) call its
``acall`` (``call`` when used synchronously). For each call:

1. Decide the ``pre_tool`` action (the tool's name, the call's keyword arguments).
2. Allow: call the wrapped tool with the decided arguments (``pre.args``, redactions included).
   Deny: the tool does not run; the agent gets ``ToolOutput(is_error=True)`` with the reason.
   Stop (kill switch, budget): raise ``RunStopped``. Agents turn every tool exception into an
   error result and carry on, so ``watch(handler)`` is needed to end the run: it cancels the
   run as soon as a tool reports ``RunStopped`` and raises it to the caller.
   Approval: with ``pause_on_approval=True`` the agent's step waits (``ctx.wait_for_event``)
   after writing ``ApprovalRequired`` to the event stream; after ``kernel.approve(id, by=...)``
   send ``ApprovalDecided(approval_id=id)`` and the step runs again, now approved. Otherwise
   the model sees a denial naming the approval id, and a retry after approval runs.
3. After the call, decide the result: the agent gets ``post.result`` (a redaction) or the
   denial, never the original (``raw_output`` included).

Fails closed: an error in the gate denies; an exception raised by the wrapped tool is recorded
as the call's outcome and re-raised for the agent to report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from llama_index.core.agent.workflow.workflow_events import ToolCallResult
from llama_index.core.tools import FunctionTool, ToolMetadata, ToolOutput
from llama_index.core.tools.types import AsyncBaseTool, BaseTool, adapt_to_async_tool
from llama_index.core.workflow import Context, HumanResponseEvent, InputRequiredEvent

from bastion.adapters._core import STOP_CODES, Post, Pre, RunStopped, Source, ToolGate
from bastion.kernel import Kernel

__all__ = ["ApprovalDecided", "ApprovalRequired", "GovernedTool", "govern_tools",
           "govern_workflow", "watch"]


class ApprovalRequired(InputRequiredEvent):  # type: ignore[misc]
    """Written to the event stream when a governed call waits for a human's approval."""

    approval_id: str
    tool: str
    message: str


class ApprovalDecided(HumanResponseEvent):  # type: ignore[misc]
    """Send after ``kernel.approve``/``kernel.refuse``; it carries no authority itself."""

    approval_id: str


class GovernedTool(AsyncBaseTool):  # type: ignore[misc]
    """``tool`` under ``gate``: same metadata, every call decided before and after it runs."""

    def __init__(self, tool: BaseTool, gate: ToolGate, *, pause_on_approval: bool = False):
        self.tool = tool
        self.gate = gate
        self.pause_on_approval = pause_on_approval
        self._async = adapt_to_async_tool(tool)

    @property
    def metadata(self) -> ToolMetadata:
        return self.tool.metadata

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        name = self.metadata.get_name()
        pre = self.gate.before(name, _named(args, kwargs))
        if not pre.run:
            return self._refuse(pre, kwargs)
        try:
            out = self._async.call(**self._with_context(pre.args))
        except Exception as exc:
            self.gate.failed(pre, exc)
            raise
        return self._shown(pre, out, self.gate.after(pre, _seen(out)))

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        name = self.metadata.get_name()
        pre = await self.gate.abefore(name, _named(args, kwargs))
        if not pre.run and pre.pending is not None and self.pause_on_approval:
            await _wait_for_approval(pre.pending, name, pre.message)
        if not pre.run:
            return self._refuse(pre, kwargs)
        try:
            out = await self._async.acall(**self._with_context(pre.args))
        except Exception as exc:
            self.gate.failed(pre, exc)
            raise
        return self._shown(pre, out, await self.gate.aafter(pre, _seen(out)))

    # -- internals -------------------------------------------------------------------------
    def _with_context(self, args: dict[str, Any]) -> dict[str, Any]:
        """Agents hand their workflow ``Context`` only to a ``FunctionTool`` asking for it;
        the proxy passes it on (it is not an argument the model chose, so not governed)."""
        tool = self.tool
        if isinstance(tool, FunctionTool) and tool.requires_context and tool.ctx_param_name:
            return {**args, tool.ctx_param_name: Context.get_step_context()}
        return args

    def _refuse(self, pre: Pre, raw_input: dict[str, Any]) -> ToolOutput:
        if pre.stop:
            raise RunStopped(pre.decision)
        return _error(self.metadata.get_name(), pre.message, raw_input)

    def _shown(self, pre: Pre, out: Any, post: Post) -> ToolOutput:
        if post.stop and post.decision is not None:
            raise RunStopped(post.decision)
        name = self.metadata.get_name()
        if not post.allowed:
            return _error(name, post.message, pre.args)
        if isinstance(out, ToolOutput) and post.result == _seen(out):
            return out  # what was checked is what the model gets (every block of it)
        text = post.result if isinstance(post.result, str) else str(post.result)
        return ToolOutput(content=text, tool_name=name, raw_input=pre.args,
                          raw_output=post.result)


def govern_tools(tools: Iterable[BaseTool], kernel: Kernel, *, agent: Source = None,
                 session: Source = None, context: Source = None,
                 pause_on_approval: bool = False,
                 stop_codes: frozenset[str] = STOP_CODES) -> list[GovernedTool]:
    """Wrap ``tools`` for an agent, sharing one gate (and so one approval memory)."""
    gate = ToolGate(kernel, agent=agent, session=session, context=context,
                    stop_codes=stop_codes)
    return [GovernedTool(t, gate, pause_on_approval=pause_on_approval) for t in tools]


def govern_workflow(workflow: Any, kernel: Kernel, *, session: Source = None,
                    context: Source = None, pause_on_approval: bool = False,
                    stop_codes: frozenset[str] = STOP_CODES) -> Any:
    """Put an ``AgentWorkflow``'s own ``handoff`` tool under ``kernel`` too: the workflow adds
    it to every agent after their tools were wrapped, and it passes control to an agent the
    model names (``args.to_agent``), so an ungoverned one would be a tool call no rule sees.
    Each agent's handoff is decided as tool ``handoff`` for agent id = the agent's name.
    Returns ``workflow`` (changed in place)."""
    gates: dict[str, ToolGate] = {}
    make = workflow._get_handoff_tool  # the workflow's own, bound

    def governed_handoff(current_agent: Any) -> Any:
        tool = make(current_agent)
        if tool is None:
            return None
        gate = gates.get(current_agent.name)
        if gate is None:
            gate = gates[current_agent.name] = ToolGate(
                kernel, agent={"id": current_agent.name}, session=session, context=context,
                stop_codes=stop_codes)
        return GovernedTool(tool, gate, pause_on_approval=pause_on_approval)

    object.__setattr__(workflow, "_get_handoff_tool", governed_handoff)
    return workflow


async def watch(handler: Any, on_event: Callable[[Any], Any] | None = None) -> Any:
    """Await an agent run (its ``WorkflowHandler``); when a governed tool raised
    ``RunStopped``, cancel the run and raise it here instead of letting the agent go on.

    ``watch`` consumes the run's event stream; ``on_event`` sees every event first (e.g. to
    answer ``ApprovalRequired``)."""
    async for event in handler.stream_events():
        if on_event is not None:
            on_event(event)
        if isinstance(event, ToolCallResult):
            exc = event.tool_output.exception
            if isinstance(exc, RunStopped):
                await handler.cancel_run()
                raise exc
    return await handler


async def _wait_for_approval(approval_id: str, tool: str, message: str) -> None:
    """Pause the agent's step until ``ApprovalDecided`` for ``approval_id`` arrives.

    The first time, ``wait_for_event`` raises the runtime's pause (agents let it through);
    when the event arrives the whole step runs again and the gate presents the approval to
    the kernel. Outside a workflow step there is nothing to pause: the call is denied."""
    try:
        ctx = Context.get_step_context()
    except Exception:
        return
    await ctx.wait_for_event(
        ApprovalDecided, waiter_id=approval_id,
        waiter_event=ApprovalRequired(approval_id=approval_id, tool=tool, message=message),
        requirements={"approval_id": approval_id}, timeout=None)


def _named(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The call's arguments by name: keywords, or one positional ``input`` (LlamaIndex's
    convention for single-input tools); anything else is left for the gate to refuse."""
    if not args:
        return kwargs
    if len(args) == 1 and not kwargs:
        return {"input": args[0]}
    return args


def _seen(out: Any) -> Any:
    """What the model would see of a tool's output: its text, or, when it holds blocks other
    than text (citations, documents, images), every block, which the agent sends on too."""
    if not isinstance(out, ToolOutput):
        return out
    blocks = getattr(out, "blocks", None) or []
    if all(type(b).__name__ == "TextBlock" for b in blocks):
        return out.content
    return [_block(b) for b in blocks]


def _block(block: Any) -> Any:
    dump = getattr(block, "model_dump", None)
    if callable(dump):
        try:
            return dump(mode="json")
        except Exception:  # a block pydantic cannot dump: its text stands for it
            return str(block)
    return str(block)


def _error(tool: str, message: str, raw_input: dict[str, Any]) -> ToolOutput:
    return ToolOutput(content=message, tool_name=tool, raw_input=raw_input,
                      raw_output=message, is_error=True)
