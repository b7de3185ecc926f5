"""CrewAI: global tool-call hooks that put every tool call of every crew under the kernel.

``Governed.install()`` registers three of CrewAI's public hooks (``crewai.hooks``); ``uninstall``
(or leaving ``with Governed(kernel):``) removes exactly those. For each tool call, in order:

1. ``before_tool_call`` decides a ``pre_tool`` action (``ToolGate.before``) for the sanitized tool
   name and the call's arguments. Allowed: the argument dict CrewAI hands to the tool is
   rewritten in place with the kernel's arguments (redactions). Anything else returns ``False``,
   CrewAI's way to block the call. A ``require_approval`` decision is put to a human at the
   console through ``ToolCallHookContext.request_human_input`` when ``human=`` names who
   answers; otherwise it is a deny whose message names the approval id (the same call runs
   once ``kernel.approve(id, by=...)`` granted it).
2. ``after_tool_call`` replaces what the model sees: CrewAI's own text for a blocked call
   ("Tool execution blocked by hook") becomes bastion's denial message; an executed call's
   result is decided at ``post_tool`` (``ToolGate.after``) and replaced by a redaction or the
   denial message. A call ``before_tool_call`` never decided, or whose arguments a later hook
   changed, has its result withheld.
3. A stop (kill switch, budget) also marks the run: ``before_llm_call`` raises
   ``CrewRunStopped`` (a ``RunStopped`` and a ``HookAborted``) at the run's next model call, the
   one exception CrewAI lets out of ``kickoff``.

CrewAI swallows any other exception a hook raises and runs the tool (fail open), so every hook
here catches its own errors and denies. Hooks are synchronous, also under ``akickoff``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Callable, Mapping
from typing import Any

from crewai.hooks import (
    HookAborted,
    register_after_tool_call_hook,
    register_before_llm_call_hook,
    register_before_tool_call_hook,
    unregister_after_tool_call_hook,
    unregister_before_llm_call_hook,
    unregister_before_tool_call_hook,
)

from bastion.adapters._core import Pre, RunStopped, Source, ToolGate
from bastion.kernel import Decision, Kernel

__all__ = ["CrewRunStopped", "Governed"]

From = Callable[[Any], Mapping[str, Any]]  # ToolCallHookContext -> {"id": ...}


class CrewRunStopped(HookAborted, RunStopped):  # type: ignore[misc]
    """``RunStopped`` that CrewAI's hook dispatcher lets through (it swallows other errors)."""

    def __init__(self, decision: Decision) -> None:
        RunStopped.__init__(self, decision)
        self.reason, self.source = str(self), None


class Governed:
    """Governs the tool calls of every CrewAI agent in the process while installed.

    ``agent``, ``session`` and ``context`` are mappings or zero-argument callables;
    ``agent_from``/``session_from`` derive them from the ``ToolCallHookContext`` instead, e.g.
    ``session_from=lambda ctx: {"id": str(ctx.crew.id)}``. Install it after your own tool hooks
    so the arguments it approves are the ones the tool receives.
    """

    def __init__(self, kernel: Kernel, *, agent: Source = None, session: Source = None,
                 context: Source = None, agent_from: From | None = None,
                 session_from: From | None = None, human: str | None = None):
        self.gate = ToolGate(kernel, agent=agent, session=session, context=context)
        self.agent_from, self.session_from, self.human = agent_from, session_from, human
        self._calls: dict[int, tuple[Any, Pre | str]] = {}  # id(tool_input) -> its decision
        self._stops: list[tuple[Any, Decision]] = []        # (crew or agent, stop decision)
        self._lock = threading.Lock()                         # native tool calls run in threads
        self._tickets: dict[int, int] = {}    # id(tool) -> runs its open decisions allow
        self._open: dict[int, int] = {}       # id(tool) -> its allowed calls not ended yet
        self._wrapped: dict[int, Any] = {}    # id(tool) -> the tool whose invoke is counted

    # -- registration -------------------------------------------------------------------------
    def install(self) -> Governed:
        register_before_tool_call_hook(self.before_tool_call)
        register_after_tool_call_hook(self.after_tool_call)
        register_before_llm_call_hook(self.before_llm_call)
        return self

    def uninstall(self) -> None:
        unregister_before_tool_call_hook(self.before_tool_call)
        unregister_after_tool_call_hook(self.after_tool_call)
        unregister_before_llm_call_hook(self.before_llm_call)
        with self._lock:
            self._calls.clear()
            self._stops.clear()
            self._tickets.clear()
            self._open.clear()
            wrapped, self._wrapped = list(self._wrapped.values()), {}
        for tool in wrapped:  # the tools' own invoke again
            for name in ("invoke", "ainvoke"):
                vars(tool).pop(name, None)

    def __enter__(self) -> Governed:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # -- hooks --------------------------------------------------------------------------------
    def before_tool_call(self, ctx: Any) -> bool | None:
        """``False`` blocks the call; ``None`` lets it run with the kernel's arguments."""
        try:
            return self._before(ctx)
        except Exception as exc:  # CrewAI would swallow it and run the tool
            with contextlib.suppress(Exception), self._lock:
                self._calls[id(ctx.tool_input)] = (ctx.tool_input, (
                    f"The tool call was denied: bastion could not decide it "
                    f"({type(exc).__name__}: {exc})."))
            return False

    def after_tool_call(self, ctx: Any) -> str | None:
        """The text the model sees instead of the tool's, or ``None`` to keep it."""
        try:
            return self._after(ctx)
        except Exception as exc:
            return (f"The result of the tool call was withheld: bastion could not check it "
                    f"({type(exc).__name__}: {exc}).")

    def before_llm_call(self, ctx: Any) -> None:
        """Ends a run that a stop decision marked, before its next model call."""
        owner = ctx.crew if ctx.crew is not None else ctx.agent
        with self._lock:
            hit = next((i for i, (o, _) in enumerate(self._stops) if o is owner), None)
            if hit is None:
                return
            decision = self._stops.pop(hit)[1]
        raise CrewRunStopped(decision)

    # -- internals ----------------------------------------------------------------------------
    def _before(self, ctx: Any) -> bool | None:
        over: dict[str, Source] = {}
        if self.agent_from is not None:
            over["agent"] = functools.partial(self.agent_from, ctx)
        if self.session_from is not None:
            over["session"] = functools.partial(self.session_from, ctx)
        pre = self.gate.before(ctx.tool_name, ctx.tool_input, **over)
        if pre.pending is not None and self.human is not None:
            pre = self._ask(ctx, pre, over)
        with self._lock:
            self._calls[id(ctx.tool_input)] = (ctx.tool_input, pre)
        if not pre.run:
            if pre.stop:
                self._stop(ctx, pre.decision)
            return False
        if pre.args != ctx.tool_input:  # in place: CrewAI passes this very dict to the tool
            ctx.tool_input.clear()
            ctx.tool_input.update(pre.args)
        self._allow_once(getattr(ctx, "tool", None))
        return None

    def _allow_once(self, tool: Any) -> None:
        """One execution of ``tool`` for the decision just made. CrewAI's text (ReAct) path
        runs a raising tool again, and again with all its arguments, without asking the hooks:
        its ``invoke``/``ainvoke`` are counted, so a second run needs a second decision."""
        if tool is None:
            return
        with self._lock:
            # one more run per allowed call (parallel calls of one tool each get theirs)
            self._tickets[id(tool)] = self._tickets.get(id(tool), 0) + 1
            self._open[id(tool)] = self._open.get(id(tool), 0) + 1
            if id(tool) in self._wrapped:
                return
            self._wrapped[id(tool)] = tool
        for name in ("invoke", "ainvoke"):
            original = getattr(tool, name, None)
            if callable(original):
                with contextlib.suppress(AttributeError, TypeError):  # no __dict__: uncounted
                    object.__setattr__(tool, name, self._counted(tool, original,
                                                                 name == "ainvoke"))

    def _counted(self, tool: Any, original: Callable[..., Any], is_async: bool) -> Any:
        def spend() -> None:
            with self._lock:
                if id(tool) not in self._wrapped:
                    return  # uninstalled meanwhile: the tool is no longer governed here
                left = self._tickets.get(id(tool), 0)
                if left <= 0:
                    raise PermissionError(f"bastion: tool {getattr(tool, 'name', '?')!r} ran "
                                          "once on its decision; running it again (a retry) "
                                          "needs a new decision")
                self._tickets[id(tool)] = left - 1

        if is_async:
            async def arun(*args: Any, **kwargs: Any) -> Any:
                spend()
                return await original(*args, **kwargs)
            return arun

        def run(*args: Any, **kwargs: Any) -> Any:
            spend()
            return original(*args, **kwargs)
        return run

    def _ask(self, ctx: Any, pre: Pre, over: dict[str, Source]) -> Pre:
        """CrewAI's pause: ask at the console, record the answer, decide the call again."""
        assert pre.pending is not None and self.human is not None
        answer = ctx.request_human_input(prompt=pre.message,
                                         default_message="Type 'approve' to run it:")
        if answer.strip().lower() != "approve":
            self.gate.kernel.refuse(pre.pending, by=self.human, note=answer[:200])
            return pre
        self.gate.kernel.approve(pre.pending, by=self.human)
        return self.gate.before(ctx.tool_name, ctx.tool_input, **over)

    def _after(self, ctx: Any) -> str | None:
        with self._lock:
            held, pre = self._calls.pop(id(ctx.tool_input), (None, None))
            tool = getattr(ctx, "tool", None)
            if held is ctx.tool_input and not isinstance(pre, str) and pre is not None \
                    and pre.run and id(tool) in self._open:
                # the call ended: a run it did not use (a cached result) is no one's to take
                left = self._open[id(tool)] = max(0, self._open[id(tool)] - 1)
                self._tickets[id(tool)] = min(self._tickets.get(id(tool), 0), left)
        if held is not ctx.tool_input or pre is None:
            return (f"The result of tool '{ctx.tool_name}' was withheld: bastion did not decide "
                    f"the call.")
        if isinstance(pre, str):
            return pre
        if not pre.run:
            return pre.message
        if ctx.tool_input != pre.args:
            self.gate.failed(pre, RuntimeError("arguments changed after the decision"))
            return (f"The result of tool '{ctx.tool_name}' was withheld: its arguments were "
                    f"changed after bastion allowed the call. Decision {pre.decision.id}.")
        raw = ctx.raw_tool_result if ctx.raw_tool_result is not None else ctx.tool_result
        post = self.gate.after(pre, raw)
        if not post.allowed:
            if post.stop and post.decision is not None:
                self._stop(ctx, post.decision)
            return post.message
        if post.result is not raw and post.result != raw:  # redacted, marked or quarantined
            return post.result if isinstance(post.result, str) else _text(post.result)
        return None

    def _stop(self, ctx: Any, decision: Decision) -> None:
        owner = ctx.crew if ctx.crew is not None else ctx.agent
        with self._lock:
            self._stops.append((owner, decision))


def _text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)
