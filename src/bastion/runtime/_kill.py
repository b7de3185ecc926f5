"""The kill switch: stop an agent, a session, a tool or the whole fleet, now.

Engaging it, step by step:

1. Write a durable flag (``kill:all``, ``kill:agent:ID``, ``kill:session:ID``,
   ``kill:tool:NAME``) to the state store. Every kernel sharing the store reads the flags at
   every decision (a constant-time read of a shared generation counter) and denies
   matching actions with code ``kill_switch`` until the flag is released.
2. Cancel the matching async governed calls running in this process; each ends in
   ``GovernanceDenied`` with code ``kill_switch``.
3. Run the registered stop hooks (e.g. killing running sandbox processes).
4. Record the engagement in the audit log, with who and why.

Other processes see the flag on their next decision; a ``KillSwitch.watch`` thread in each
process also cancels their in-flight async calls within its polling interval. Releasing needs an
identity (``by``) and is audited too. Sync calls cannot be interrupted safely in Python: they
are stopped at their next decision.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from bastion._canon import norm_text
from bastion._errors import ConfigError
from bastion.kernel._inflight import IN_FLIGHT, Call
from bastion.state import StateStore


def flag_key(*, agent: str | None = None, session: str | None = None, tool: str | None = None,
             everything: bool = False) -> str:
    """The flag for exactly one scope."""
    given = [k for k, v in (("agent", agent), ("session", session), ("tool", tool)) if v]
    if everything + len(given) != 1:
        raise ConfigError("name exactly one scope: agent, session, tool or all")
    if everything:
        return "kill:all"
    kind = given[0]
    value = {"agent": agent, "session": session, "tool": tool}[kind]
    if kind == "tool":
        from bastion._canon import canonical_tool

        value = canonical_tool(str(value))
        if value is None:
            raise ConfigError(f"invalid tool name {tool!r}")
    return f"kill:{kind}:{value}"


def _matcher(flags: dict[str, str]) -> Callable[[Call], str | None]:
    def match(call: Call) -> str | None:
        for key in ("kill:all", f"kill:agent:{call.agent}", f"kill:session:{call.session}",
                    f"kill:tool:{call.tool}"):
            if key in flags:
                return key.removeprefix("kill:")
        return None

    return match


def _stop_sandboxes(flag: str) -> None:
    """Kill this process's running sandboxes that the flag covers (by their labels)."""
    from bastion.runtime._sandbox import kill_sandboxes

    scope = flag.removeprefix("kill:")
    if scope == "all":
        kill_sandboxes(lambda labels: True, "kill_switch")
        return
    kind, _, value = scope.partition(":")
    kill_sandboxes(lambda labels: labels.get(kind) == value, "kill_switch")


class KillSwitch:
    """Engage and release kill flags; stop what is running (module docstring, steps 1-4)."""

    def __init__(self, state: StateStore, *, audit: Any = None,
                 releasers: Collection[str] | None = None,
                 clock: Callable[[], int] = time.time_ns):
        self._state = state
        self._audit = audit
        self._releasers = None if releasers is None else {norm_text(r) for r in releasers}
        self._clock = clock
        self._hooks: list[Callable[[str], object]] = []

    @classmethod
    def for_kernel(cls, kernel: Any) -> KillSwitch:
        """The kill switch over a kernel's own state store and audit log; engaging it also
        kills this process's running sandboxes that the scope covers (``code_tool`` labels
        them with agent, session and tool)."""
        switch = cls(kernel.state, audit=kernel.audit)
        switch.on_engage(_stop_sandboxes)
        return switch

    def on_engage(self, hook: Callable[[str], object]) -> None:
        """Run ``hook(flag)`` whenever a flag is engaged (step 3)."""
        self._hooks.append(hook)

    def engage(self, *, by: str, reason: str = "", agent: str | None = None,
               session: str | None = None, tool: str | None = None,
               everything: bool = False) -> tuple[str, int]:
        """Engage one scope; returns the flag and how many running calls were cancelled."""
        if not by:
            raise ConfigError("engaging the kill switch needs an identity ('by')")
        key = flag_key(agent=agent, session=session, tool=tool, everything=everything)
        record = {"by": by, "reason": reason, "ts": self._clock()}
        self._state.set_flag(key, json.dumps(record))  # step 1
        cancelled = IN_FLIGHT.cancel(_matcher({key: ""}))  # step 2
        errors = []
        for hook in self._hooks:  # step 3
            try:
                hook(key)
            except Exception as exc:  # a failing hook must not stop the others
                errors.append(f"{type(exc).__name__}: {exc}")
        self._record("kill.engage", key, by, reason, cancelled=cancelled, errors=errors)
        return key, cancelled

    def release(self, *, by: str, reason: str = "", agent: str | None = None,
                session: str | None = None, tool: str | None = None,
                everything: bool = False) -> bool:
        """Release one scope; False when it was not engaged.

        Releasing is the dangerous direction, so it is refused (``ConfigError``) without an
        audit log to record it, by an identity outside ``releasers`` (when given), and by the
        very agent the flag stops.
        """
        if not by:
            raise ConfigError("releasing the kill switch needs an identity ('by')")
        if self._audit is None:
            raise ConfigError("releasing the kill switch must be audited: give it an audit log")
        if self._releasers is not None and norm_text(by) not in self._releasers:
            raise ConfigError(f"{by!r} may not release the kill switch")
        if agent is not None and norm_text(by) == norm_text(agent):
            raise ConfigError("an agent cannot release its own kill switch")
        key = flag_key(agent=agent, session=session, tool=tool, everything=everything)
        released = self._state.clear_flag(key)
        self._record("kill.release", key, by, reason, released=released)
        return released

    def engaged(self) -> dict[str, dict[str, Any]]:
        """Every engaged flag with who engaged it, why and when."""
        out = {}
        for key, value in self._state.flags().items():
            if key.startswith("kill:"):
                try:
                    out[key] = json.loads(value)
                except ValueError:
                    out[key] = {"raw": value}
        return out

    def watch(self, *, interval_s: float = 0.05) -> Callable[[], None]:
        """Cancel in-flight calls and kill covered sandboxes here when another process engages a
        flag; returns a stop function. The check is one read of the shared generation counter
        per interval (flags are re-read from the store only when it changed)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                flags = {k: v for k, v in self._state.flags().items() if k.startswith("kill:")}
                if flags:
                    IN_FLIGHT.cancel(_matcher(flags))
                    for flag in flags:
                        _stop_sandboxes(flag)

        thread = threading.Thread(target=loop, name="bastion-kill-watch", daemon=True)
        thread.start()
        return stop.set

    def _record(self, kind: str, key: str, by: str, reason: str, **extra: Any) -> None:
        if self._audit is None:
            return
        ts = self._clock()
        self._audit.append({"kind": kind, "id": f"{kind}:{key}:{ts}", "ts": ts, "flag": key,
                            "by": by, "reason": reason, **extra})
