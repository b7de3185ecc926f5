"""``govern``: put a function under the kernel.

The tool name is bound when the function is wrapped (its ``__name__`` or ``name=``); nothing a
caller passes can change it. Agent, session and context come from ``govern``'s own options (a
mapping or a zero-argument callable), never from the call's arguments.

A governed call runs as follows:

1. Bind the call's arguments to the function's parameters (defaults applied; ``self``/``cls``
   left out) and decide a ``pre_tool`` action. Anything but allow raises ``GovernanceDenied``.
2. Call the function with the arguments the decision returned (redacted when a redact rule
   applied, quarantine handles released). An exception is recorded as the call's outcome and
   re-raised.
3. If the policy has ``post_tool`` rules, decide the result: a deny raises ``GovernanceDenied``;
   a redaction, a marked or a quarantined result replaces the returned value. Otherwise, when
   the kernel tracks information flow, the result is labelled (``Kernel.label_result``) and
   marked or quarantined as the catalog says.
4. Record the outcome (``succeeded``, ``failed`` when the result was denied, ``exception``).

A ``require_approval`` decision raises ``GovernanceDenied`` carrying ``approval_id``; once granted,
retry the same call inside ``with approval(approval_id):``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
import time
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, cast

from bastion._errors import GovernanceDenied
from bastion.kernel._events import _Outcome
from bastion.kernel._inflight import IN_FLIGHT, Call
from bastion.kernel._kernel import Kernel
from bastion.kernel._redact import MASK
from bastion.kernel._types import EMPTY, Action, Decision

F = TypeVar("F", bound=Callable[..., Any])
Source = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None
_APPROVAL: contextvars.ContextVar[str | None] = contextvars.ContextVar("bastion_approval",
                                                                       default=None)
_SKIP = ("self", "cls")
_GENERATORS = frozenset((types.GeneratorType, types.AsyncGeneratorType))
_AWAITABLE: dict[type, bool] = {}  # whether a result type must be awaited (asked once a type)


@contextlib.contextmanager
def approval(approval_id: str) -> Iterator[None]:
    """Present a granted approval to the governed calls made inside the block."""
    token = _APPROVAL.set(approval_id)
    try:
        yield
    finally:
        _APPROVAL.reset(token)


def govern(kernel: Kernel, *, name: str | None = None, agent: Source = None,
           session: Source = None, context: Source = None) -> Callable[[F], F]:
    """Decorate a sync or async function so every call is decided by ``kernel`` first."""

    def wrap(fn: F) -> F:
        import inspect

        tool = name or fn.__name__
        binder = _Binder(fn)
        post = kernel.checks_results
        labels = kernel.tracks_flow and not post
        fixed = [src if src is not None and not callable(src) else EMPTY
                 for src in (agent, session, context)]
        dynamic = any(callable(src) for src in (agent, session, context))

        def action(stage: str, args: Mapping[str, Any], result: Any = None) -> Action:
            a, s, c = (_get(agent), _get(session), _get(context)) if dynamic else fixed
            return Action(tool, args, stage, a, s, c, result,
                          _APPROVAL.get() if stage == "pre_tool" else None)

        def check(decision: Decision, result: Any, started: int) -> Any:
            """One result (or one item a generator yields): labelled, and decided at
            ``post_tool`` when the policy decides results."""
            if labels:
                result = kernel.label_result(decision, result)
            if post:
                checked = kernel.evaluate(action("post_tool", decision.args or {}, result))
                if not checked.allowed:
                    kernel.record_outcome(decision, "failed", error="result denied",
                                          duration_ns=time.perf_counter_ns() - started)
                    raise GovernanceDenied(checked)
                result = checked.result
            return result

        def succeeded(decision: Decision, started: int) -> None:
            kernel.record_outcome(decision, "succeeded",
                                  duration_ns=time.perf_counter_ns() - started)

        def live(decision: Decision) -> None:
            """Between two items of a generator: the kill switch may have been engaged."""
            hit = kernel.kill_hit(decision)
            if hit is not None:
                raise GovernanceDenied(decision._replace(
                    effect="deny", code="kill_switch",
                    reasons=(f"kill switch engaged ({hit}) while the call was streaming",)))

        def items(decision: Decision, gen: Any, started: int) -> Any:
            """A generator's items, each checked as a result (``check``) as it is yielded, and
            none after the kill switch covers the call."""
            try:
                for item in gen:
                    live(decision)
                    yield check(decision, item, started)
            except GovernanceDenied:
                gen.close()
                raise
            except BaseException as exc:
                failed(decision, exc, started)
                raise
            succeeded(decision, started)

        async def async_items(decision: Decision, gen: Any, started: int) -> Any:
            try:
                async for item in gen:
                    live(decision)
                    yield check(decision, item, started)
            except GovernanceDenied:
                raise
            except BaseException as exc:
                failed(decision, exc, started)
                raise
            succeeded(decision, started)

        def after(decision: Decision, result: Any, started: int) -> Any:
            if inspect.isgenerator(result):  # what it yields is the result: checked item by item
                return items(decision, result, started)
            if inspect.isasyncgen(result):
                return async_items(decision, result, started)
            result = check(decision, result, started)
            if post or kernel.audit is not None:
                succeeded(decision, started)
            return result

        def before(args: tuple[Any, ...], kwargs: dict[str, Any]
                   ) -> tuple[Decision, tuple[Any, ...], dict[str, Any]]:
            bound = binder.bind(args, kwargs)
            decision = kernel.evaluate(action("pre_tool", bound))
            if not decision.allowed:
                raise GovernanceDenied(decision)
            if decision.args is not bound and decision.args is not None:
                args, kwargs = binder.rebuild(args, kwargs, decision.args)
            return decision, args, kwargs

        def failed(decision: Decision, exc: BaseException, started: int) -> None:
            kernel.record_outcome(decision, "exception", error=f"{type(exc).__name__}: {exc}",
                                  duration_ns=time.perf_counter_ns() - started)

        async def supervised(decision: Decision, call: Callable[[], Any], started: int) -> Any:
            """Await ``call()`` as a call in flight (the kill switch cancels it), then check
            its result (``after``)."""
            import asyncio  # already loaded by the running loop; not at import time

            task = asyncio.current_task()
            key = None if task is None else IN_FLIGHT.add(Call(
                task, asyncio.get_running_loop(), decision.tool, decision.agent,
                decision.session))
            # a switch engaged between the decision and the registration cancelled nothing
            hit = kernel.kill_hit(decision)
            if hit is not None:
                if key is not None:
                    IN_FLIGHT.remove(key)
                raise GovernanceDenied(decision._replace(
                    effect="deny", code="kill_switch",
                    reasons=(f"kill switch engaged ({hit}) before the call started",)))
            try:
                result = await call()
            except asyncio.CancelledError as exc:
                call_ = IN_FLIGHT.remove(key) if key is not None else None
                key = None
                failed(decision, exc, started)
                if call_ is not None and call_.killed is not None:
                    raise GovernanceDenied(decision._replace(
                        effect="deny", code="kill_switch",
                        reasons=(f"cancelled by the kill switch ({call_.killed})",))) from exc
                raise
            except BaseException as exc:
                failed(decision, exc, started)
                raise
            finally:
                call_ = IN_FLIGHT.remove(key) if key is not None else None
            if call_ is not None and call_.killed is not None:
                # the tool swallowed the cancellation: its result must not be used
                failed(decision, RuntimeError("result after the kill switch"), started)
                raise GovernanceDenied(decision._replace(
                    effect="deny", code="kill_switch",
                    reasons=(f"cancelled by the kill switch ({call_.killed})",)))
            return after(decision, result, started)

        async def pending(decision: Decision, awaitable: Any, started: int) -> Any:
            """What a sync callable returned that must be awaited (an object with an ``async
            def __call__``, a wrapper around a coroutine function): supervised like an async
            tool, so its result is checked and the kill switch reaches it."""
            try:
                return await supervised(decision, lambda: awaitable, started)
            finally:
                if inspect.iscoroutine(awaitable):
                    awaitable.close()  # never started (a kill switch): no "never awaited"
                elif callable(getattr(awaitable, "cancel", None)) and callable(
                        done := getattr(awaitable, "done", None)) and not done():
                    awaitable.cancel()  # a task the tool scheduled: it runs no further

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                decision, args, kwargs = before(args, kwargs)
                return await supervised(decision, lambda: fn(*args, **kwargs),
                                        time.perf_counter_ns())

            wrapper: Callable[..., Any] = run_async
        else:
            evaluate, bind, clock = kernel.evaluate, binder.bind, time.perf_counter_ns
            now = kernel.clock

            @functools.wraps(fn)
            def run(*args: Any, **kwargs: Any) -> Any:
                # before() and action() inlined: this is the hot path of every governed call
                if dynamic:
                    a0, s0, c0 = _get(agent), _get(session), _get(context)
                else:
                    a0, s0, c0 = fixed
                bound = bind(args, kwargs)
                decision = evaluate(Action(tool, bound, "pre_tool", a0, s0, c0, None,
                                           _APPROVAL.get()))
                if decision.effect != "allow":
                    raise GovernanceDenied(decision)
                if decision.args is not bound and decision.args is not None:
                    args, kwargs = binder.rebuild(args, kwargs, decision.args)
                started = clock()
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    failed(decision, exc, started)
                    raise
                awaitable = _AWAITABLE.get(type(result))
                if awaitable is None:
                    if len(_AWAITABLE) > 4096:  # types made on the fly: bounded all the same
                        _AWAITABLE.clear()
                    awaitable = _AWAITABLE[type(result)] = hasattr(type(result), "__await__")
                if awaitable:
                    waiting = pending(decision, result, started)
                    aio = sys.modules.get("asyncio")  # loaded: a Future exists
                    if aio is not None and isinstance(result, aio.Future):
                        # still a task (cancel(), callbacks), on the loop the future belongs to
                        return aio.ensure_future(waiting, loop=result.get_loop())
                    return waiting
                if post or labels or type(result) in _GENERATORS:
                    return after(decision, result, started)
                audit = kernel.audit  # record_outcome(decision, "succeeded"), inlined
                if audit is not None:
                    audit.append(_Outcome(decision, "succeeded", None, clock() - started,
                                          now()))
                return result

            wrapper = run
        wrapper.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
        wrapper.__bastion_tool__ = tool  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return wrap


def _get(source: Source) -> Mapping[str, Any]:
    if source is None:
        return {}
    return source() if callable(source) else source


class _Binder:
    """Maps a call's arguments to parameter names, fast for plain signatures."""

    def __init__(self, fn: Callable[..., Any]):
        import inspect

        self.P = inspect.Parameter
        self.sig = inspect.signature(fn)
        params = list(self.sig.parameters.values())
        kinds = {p.kind for p in params}
        P = self.P
        self.plain = not kinds & {P.POSITIONAL_ONLY, P.VAR_POSITIONAL, P.VAR_KEYWORD}
        self.names = [p.name for p in params if p.kind is not P.KEYWORD_ONLY]
        self.defaults = {p.name: p.default for p in params
                         if p.default is not P.empty and p.name not in _SKIP}
        self.skip = [n for n in _SKIP if n in self.sig.parameters]

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.plain and not args and not self.defaults and not self.skip:
            return kwargs  # keyword-only call: the call made this dict; nothing else holds it
        if self.plain and len(args) <= len(self.names):
            out = dict(self.defaults)
            out.update(zip(self.names, args, strict=False))
            out.update(kwargs)
        else:
            b = self.sig.bind(*args, **kwargs)
            b.apply_defaults()
            out = {}
            for pname, value in b.arguments.items():
                kind = self.sig.parameters[pname].kind
                if kind is self.P.VAR_KEYWORD:
                    if set(value) & set(out):  # run_shell("rm", argv=["ls"]): both are
                        out[pname] = dict(value)  # decided, the extra keywords by their name
                    else:
                        out.update(value)
                elif kind is self.P.VAR_POSITIONAL:
                    out[pname] = list(value)
                else:
                    out[pname] = value
        for skip in self.skip:
            out.pop(skip, None)
        return out

    def rebuild(self, args: tuple[Any, ...], kwargs: dict[str, Any], new: Any
                ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments with redacted values put back in their places (every one
        masked when the decision's arguments are not a map: nothing can be told apart)."""
        b = self.sig.bind(*args, **kwargs)
        b.apply_defaults()  # a default the decision redacted is passed redacted
        if not isinstance(new, Mapping):
            new = dict.fromkeys(b.arguments, MASK)
            for pname, value in b.arguments.items():
                if self.sig.parameters[pname].kind is self.P.VAR_KEYWORD:
                    new.update(dict.fromkeys(value, MASK))
        for pname in list(b.arguments):
            kind = self.sig.parameters[pname].kind
            if kind is self.P.VAR_KEYWORD:
                extra = b.arguments[pname]
                nested = set(extra) & (set(b.arguments) - {pname})  # as ``bind`` decided them
                src = new.get(pname, {}) if nested else new
                if not isinstance(src, Mapping):  # masked whole: every extra keyword masked
                    src = dict.fromkeys(extra, MASK)
                # a keyword the redaction renamed (a pattern matched it) is masked, not passed
                b.arguments[pname] = {k: src.get(k, MASK) for k in extra}
            elif kind is self.P.VAR_POSITIONAL:
                value = new.get(pname, MASK)  # masked whole: every positional masked
                b.arguments[pname] = tuple(value) if isinstance(value, list | tuple) \
                    else (MASK,) * len(b.arguments[pname])
            elif pname not in _SKIP:  # absent: renamed by a pattern, so masked
                b.arguments[pname] = new.get(pname, MASK)
        return b.args, b.kwargs
