"""PydanticAI: a capability that puts every tool call of an agent under the kernel.

``Governed`` hooks ``wrap_tool_execute``, PydanticAI's hook around the execution of every tool
(function tools, toolsets and MCP servers alike; output tools are internal and not governed).
For each call, in order:

1. Decide a ``pre_tool`` action (``ToolGate.abefore``) with the validated arguments.
2. Not allowed: a stop (kill switch, budget) raises ``RunStopped`` out of the run; a
   ``require_approval`` decision defers the call with ``ApprovalRequired`` (the run ends with
   ``DeferredToolRequests`` whose metadata names ``bastion_approval_id``) unless deferring is
   off or PydanticAI already approved the call (bastion's approval is then still missing); in
   those cases and for every other deny the tool is skipped with ``SkipToolExecution`` and the
   model receives the denial message as the tool's return.
3. Allowed: the tool runs with the kernel's arguments (redacted where a rule said so).
4. Decide the result (``ToolGate.aafter``): the model gets the original, a redaction, or the
   denial message; a stop raises ``RunStopped``.

The gate never raises, so an error anywhere in deciding is a deny the model sees. PydanticAI's
hooks are async; ``Agent.run_sync`` drives the same path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

try:
    from pydantic_ai import ApprovalRequired, CallDeferred, RunContext, SkipToolExecution
    from pydantic_ai.capabilities import AbstractCapability
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("bastion.adapters.pydantic_ai needs PydanticAI: "
                      "pip install 'bastion[pydantic-ai]'") from exc

from bastion.adapters._core import RunStopped, Source, ToolGate
from bastion.kernel import Kernel

__all__ = ["Governed"]

SessionFrom = Callable[[RunContext[Any]], Mapping[str, Any]]


@dataclass
class Governed(AbstractCapability[Any]):  # type: ignore[misc]
    """Add to ``Agent(capabilities=[...])``; put it last to sit closest to the tools.

    ``agent``, ``session`` and ``context`` are mappings or zero-argument callables; ``session_from``
    derives the session from the run instead, e.g. ``lambda ctx: {"id": ctx.run_id}``. With
    ``defer_approvals`` (the default) the agent needs ``DeferredToolRequests`` among its output
    types (or a ``HandleDeferredToolCalls`` capability); without it an approval is a deny whose
    message names the approval id, and the same call runs once it is approved.
    """

    kernel: Kernel
    _: KW_ONLY
    agent: Source = None
    session: Source = None
    context: Source = None
    session_from: SessionFrom | None = None
    defer_approvals: bool = True
    gate: ToolGate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.gate = ToolGate(self.kernel, agent=self.agent, session=self.session,
                             context=self.context)

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a live kernel: not buildable from an agent spec

    async def wrap_tool_execute(self, ctx: RunContext[Any], *, call: Any, tool_def: Any,
                                args: dict[str, Any], handler: Callable[..., Any]) -> Any:
        session = (functools.partial(self.session_from, ctx)
                   if self.session_from is not None else None)
        pre = await self.gate.abefore(tool_def.name, args, session=session)
        if not pre.run:
            if pre.stop:
                raise RunStopped(pre.decision)
            if pre.pending is not None and self.defer_approvals and not ctx.tool_call_approved:
                raise ApprovalRequired(metadata={"bastion_approval_id": pre.pending,
                                                 "message": pre.message})
            raise SkipToolExecution(pre.message)
        try:
            result = await handler(pre.args)
        except (SkipToolExecution, ApprovalRequired, CallDeferred):
            raise  # another capability's control flow: the tool did not run
        except Exception as exc:
            self.gate.failed(pre, exc)
            raise
        post = await self.gate.aafter(pre, result)
        if post.stop:
            assert post.decision is not None
            raise RunStopped(post.decision)
        return post.result
