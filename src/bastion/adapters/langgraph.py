"""LangGraph and LangChain: every tool call decided at the tool-call wrapper.

``BastionMiddleware`` is a LangChain v1 ``AgentMiddleware`` for
``langchain.agents.create_agent(model, tools, middleware=[...])``; its ``wrap_tool_call`` and
``awrap_tool_call`` are also the wrappers ``langgraph.prebuilt.ToolNode(tools, wrap_tool_call=...,
awrap_tool_call=...)`` takes. For each tool call request:

1. Decide the ``pre_tool`` action (tool name and arguments from ``request.tool_call``; the
   session from ``session=``, or from the run's ``RunnableConfig`` via ``session_from``).
2. Allow: run the tool with the decided arguments (``pre.args``, redactions included).
   Deny: the tool does not run; the model sees an error ``ToolMessage`` with the reason.
   Stop (kill switch, budget): raise ``RunStopped``, which ends the graph run.
   Approval: with ``pause_on_approval=True`` the run pauses with ``interrupt()`` (needs a
   checkpointer); after ``kernel.approve(id, by=...)`` resume it with ``Command(resume=...)``
   and the call runs. The resume value carries no authority: only the kernel's approval does.
   Otherwise the model sees a denial naming the approval id, and a retry after approval runs.
3. After the call, decide the result: the model sees ``post.result`` (a redaction) or the
   denial, never the original.

Fails closed: an error in the gate or in ``session_from`` denies; an exception raised by the
tool is recorded as the call's outcome and re-raised for ``ToolNode`` to handle.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import ToolMessage
from langgraph.errors import GraphBubbleUp
from langgraph.types import interrupt

from bastion.adapters._core import STOP_CODES, Post, Pre, RunStopped, Source, ToolGate
from bastion.kernel import Kernel

__all__ = ["BastionMiddleware", "thread_session"]

ConfigSession = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def thread_session(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The session named by the run's ``thread_id``; a run without one is denied."""
    thread = (config.get("configurable") or {}).get("thread_id")
    if not thread:
        raise ValueError("the run's config has no 'configurable.thread_id'")
    return {"id": str(thread)}


class BastionMiddleware(AgentMiddleware):  # type: ignore[misc]
    """Puts every tool call of a LangChain agent or a LangGraph ``ToolNode`` under ``kernel``."""

    def __init__(self, kernel: Kernel, *, agent: Source = None, session: Source = None,
                 context: Source = None, session_from: ConfigSession | None = None,
                 pause_on_approval: bool = False, stop_codes: frozenset[str] = STOP_CODES):
        super().__init__()
        self.gate = ToolGate(kernel, agent=agent, session=session, context=context,
                             stop_codes=stop_codes)
        self.session_from = session_from
        self.pause_on_approval = pause_on_approval

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        call = request.tool_call
        pre = self.gate.before(call["name"], call.get("args"), session=self._session(request),
                               schema=_schema(request))
        if not pre.run:
            return self._refuse(request, pre)
        try:
            out = handler(request.override(tool_call={**call, "args": pre.args}))
        except Exception as exc:
            if not isinstance(exc, GraphBubbleUp):
                self.gate.failed(pre, exc)
            raise
        return self._shown(request, out, self.gate.after(pre, _seen(out)))

    async def awrap_tool_call(self, request: Any,
                              handler: Callable[[Any], Awaitable[Any]]) -> Any:
        call = request.tool_call
        pre = await self.gate.abefore(call["name"], call.get("args"),
                                      session=self._session(request), schema=_schema(request))
        if not pre.run:
            return self._refuse(request, pre)
        try:
            out = await handler(request.override(tool_call={**call, "args": pre.args}))
        except Exception as exc:
            if not isinstance(exc, GraphBubbleUp):
                self.gate.failed(pre, exc)
            raise
        return self._shown(request, out, await self.gate.aafter(pre, _seen(out)))

    # -- internals -------------------------------------------------------------------------
    def _session(self, request: Any) -> Source:
        derive = self.session_from
        if derive is None:
            return None
        # read inside the gate, so an error (no thread id) becomes a deny
        return lambda: derive(request.runtime.config)

    def _refuse(self, request: Any, pre: Pre) -> ToolMessage:
        if pre.stop:
            raise RunStopped(pre.decision)
        if pre.pending is not None and self.pause_on_approval:
            call = request.tool_call
            # the first time, interrupt() raises and the run pauses. On resume the node runs
            # again and the gate presents the approval it remembers, so the call is decided
            # anew; interrupt() returns here only if that memory is lost (another process),
            # and the call is denied with the new approval id
            interrupt({"type": "bastion_approval", "approval_id": pre.pending,
                       "tool": call["name"], "args": call.get("args"),
                       "tool_call_id": call.get("id"), "message": pre.message})
        return _error(request, pre.message)

    def _shown(self, request: Any, out: Any, post: Post) -> Any:
        if post.stop and post.decision is not None:
            raise RunStopped(post.decision)
        if not post.allowed:
            return _error(request, post.message)
        if isinstance(out, ToolMessage):
            if post.result == out.content:
                return out
            return out.model_copy(update={"content": _content(post.result)})
        if post.result == out:  # a Command (or other value) passed through unchanged
            return out
        # a Command cannot be rewritten piecemeal: a changed result withholds all of it
        return _error(request, f"The result of tool '{request.tool_call['name']}' was "
                               "withheld by bastion: it was rewritten and is not a message.")


def _schema(request: Any) -> Any:
    """The JSON schema of the tool's arguments (what ToolNode will validate them with)."""
    props = getattr(getattr(request, "tool", None), "args", None)
    return {"properties": props} if isinstance(props, dict) else None


def _seen(out: Any) -> Any:
    """What the model would see of a tool's output."""
    return out.content if isinstance(out, ToolMessage) else out


def _content(value: Any) -> Any:
    return value if isinstance(value, str | list) else json.dumps(value, default=str)


def _error(request: Any, message: str) -> ToolMessage:
    call = request.tool_call
    return ToolMessage(content=message, tool_call_id=call.get("id") or "",
                       name=call["name"], status="error")
