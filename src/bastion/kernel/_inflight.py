"""The governed calls that are running now, so a kill switch can stop them.

``govern`` registers every async call for as long as it runs (sync calls cannot be interrupted
safely in Python and are only stopped at their next decision). ``cancel(match)`` cancels the
matching tasks on their own event loops (thread-safe) and marks them killed, so the wrapper
turns the cancellation into ``GovernanceDenied`` with code ``kill_switch``.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio


@dataclass(slots=True)
class Call:
    task: asyncio.Task[object]
    loop: asyncio.AbstractEventLoop
    tool: str
    agent: str
    session: str
    killed: str | None = field(default=None)  # the reason, once a kill switch cancelled it


class InFlight:
    """A thread-safe registry of running async governed calls."""

    def __init__(self) -> None:
        self._calls: dict[int, Call] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def add(self, call: Call) -> int:
        key = next(self._ids)
        with self._lock:
            self._calls[key] = call
        return key

    def remove(self, key: int) -> Call | None:
        with self._lock:
            return self._calls.pop(key, None)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self._calls.values())

    def cancel(self, match: Callable[[Call], str | None]) -> int:
        """Cancel every call for which ``match`` returns a reason; how many were cancelled."""
        hit = 0
        for call in self.snapshot():
            reason = match(call)
            if reason is None or call.killed is not None:
                continue
            call.killed = reason
            hit += 1
            with contextlib.suppress(RuntimeError):  # a closed loop: the call is over anyway
                call.loop.call_soon_threadsafe(call.task.cancel)
        return hit


IN_FLIGHT = InFlight()
