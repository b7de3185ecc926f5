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
        # tool call id -> the arguments bastion let it run with (see before_tool_execute)
        self._decided: dict[str, dict[str, Any]] = {}

    @classmethod
    def get_serialization_name(cls) -> str | None:
        return None  # holds a live kernel: not buildable from an agent spec

    async def wrap_tool_execute(self, ctx: RunContext[Any], *, call: Any, tool_def: Any,
                                args: dict[str, Any], handler: Callable[..., Any]) -> Any:
        session = (functools.partial(self.session_from, ctx)
                   if self.session_from is not None else None)
        plain = {k: _plain(v) for k, v in args.items()}  # models as the data they hold
        pre = await self.gate.abefore(tool_def.name, plain, session=session)
        if not pre.run:
            if pre.stop:
                raise RunStopped(pre.decision)
            if pre.pending is not None and self.defer_approvals and not ctx.tool_call_approved:
                raise ApprovalRequired(metadata={"bastion_approval_id": pre.pending,
                                                 "message": pre.message})
            raise SkipToolExecution(pre.message)
        try:  # what the decision changed (a redacted field) goes back into the models
            run_args = args if pre.args == plain else _rebuilt(args, pre.args)
        except Exception as exc:
            self.gate.failed(pre, exc)
            raise SkipToolExecution(f"The tool call '{tool_def.name}' was denied: its "
                                    f"redacted arguments are not valid for the tool ({exc}). "
                                    f"Decision {pre.decision.id}.") from None
        self._decided[call.tool_call_id] = run_args
        try:
            result = await handler(run_args)
        except (SkipToolExecution, ApprovalRequired, CallDeferred):
            raise  # another capability's control flow: the tool did not run
        except Exception as exc:
            self.gate.failed(pre, exc)
            raise
        finally:
            self._decided.pop(call.tool_call_id, None)
        post = await self.gate.aafter(pre, result)
        if post.stop:
            assert post.decision is not None
            raise RunStopped(post.decision)
        return post.result

    async def before_tool_execute(self, ctx: RunContext[Any], *, call: Any, tool_def: Any,
                                  args: dict[str, Any]) -> dict[str, Any]:
        """Last before the tool (Governed last among the capabilities): the arguments must
        still be the ones bastion decided; a capability that changed them since denies."""
        decided = self._decided.get(call.tool_call_id)
        if decided is not None and args != decided:
            raise SkipToolExecution(
                f"The tool call '{tool_def.name}' was denied: its arguments were changed after "
                "bastion decided them (by a capability that runs after it; put Governed last).")
        return args


def _plain(value: Any) -> Any:
    """A pydantic model (a validated tool argument) as the plain data it holds."""
    dump = getattr(value, "model_dump", None)
    return dump(mode="python") if callable(dump) and not isinstance(value, type) else value


def _rebuilt(args: Mapping[str, Any], decided: Mapping[str, Any]) -> dict[str, Any]:
    """``decided`` (plain data) with each argument that was a model validated into one again."""
    out: dict[str, Any] = {}
    for name, value in decided.items():
        original = args.get(name)
        validate = getattr(type(original), "model_validate", None)
        out[name] = validate(value) if callable(validate) and original is not None else value
    return out
