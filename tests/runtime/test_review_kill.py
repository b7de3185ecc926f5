"""Review of the kill switch (issue 6): release proofs are single-use whatever their spelling
and whenever they are replayed, the watch thread survives a failing store, and a switch engaged
after the decision still stops the call, whatever the tool's spelling."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion import Action, ConfigError, GovernanceDenied, Kernel, StateError, govern
from bastion.flow import parse_catalog
from bastion.runtime import (
    IsolationGuard,
    IsolationLevel,
    KillSwitch,
    RingGuard,
    SandboxPolicy,
    code_tool,
    detect_isolation,
    release_proof,
    running_sandboxes,
)
from bastion.state import StateStore, open_store

POLICY = "version: 1\nrules:\n  - {id: all, effect: allow}\n"
CATALOG = parse_catalog("version: 1\ntools:\n  run_python: {class: code}\n")
WINDOW = 601  # 2 * PROOF_SKEW_S + 1: the window of the single-use record


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> int:
        return int(self.now * 1e9)


def _switch(clock: Clock) -> tuple[KillSwitch, Ed25519PrivateKey, list[dict[str, Any]]]:
    alice = Ed25519PrivateKey.generate()
    audit: list[dict[str, Any]] = []
    switch = KillSwitch(open_store(None), audit=audit, release_keys={"alice": alice.public_key()},
                        clock=clock)
    return switch, alice, audit


def _release(switch: KillSwitch, proof: str) -> bool:
    switch.engage(by="oncall", agent="bot")
    try:
        return switch.release(by="alice", reason="fixed", agent="bot", proof=proof)
    except ConfigError as refused:
        assert "already used" in str(refused), refused
        return False


def test_a_used_proof_cannot_be_replayed_in_another_spelling() -> None:
    now = 1_800_000_000
    switch, alice, audit = _switch(Clock(now))
    proof = release_proof(alice, by="alice", reason="fixed", agent="bot", now=now)
    ts, sig = proof.split(".")
    assert _release(switch, proof)
    for variant in (f"+{ts}.{sig}", f" {ts}.{sig}", f"0{ts}.{sig}", f"{ts[:4]}_{ts[4:]}.{sig}",
                    f"{ts}.{sig}=", f"{ts}.{sig}==", f"{ts} .{sig}"):
        assert not _release(switch, variant), variant
    assert "kill:agent:bot" in switch.engaged()
    assert [e["kind"] for e in audit].count("kill.release") == 1


def test_a_used_proof_stays_used_across_a_window_boundary() -> None:
    ts = WINDOW * 2_995_000 + 500  # the proof's 10 minutes of validity straddle a boundary
    clock = Clock(ts - 200)
    switch, alice, _ = _switch(clock)
    proof = release_proof(alice, by="alice", reason="fixed", agent="bot", now=ts)
    assert _release(switch, proof)
    clock.now = ts + 200  # still fresh (within 300 s), but in the next window of `now`
    assert not _release(switch, proof)


class FlakyStore:
    """A state store whose flag reads fail ``failures`` times (a locked or vanished file)."""

    def __init__(self, inner: StateStore, failures: int):
        self.inner, self.failures, self.reads = inner, failures, 0

    def flags(self) -> dict[str, str]:
        self.reads += 1
        if self.reads <= self.failures:
            raise StateError("database is locked")
        return self.inner.flags()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _wait(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def test_the_watch_thread_outlives_a_failing_store(tmp_path: Path) -> None:
    with Kernel.from_text(POLICY, audit=False, state=tmp_path / "s.db") as kernel:
        flaky = FlakyStore(kernel.state, failures=3)
        audit: list[dict[str, Any]] = []
        switch = KillSwitch(flaky, audit=audit)

        @govern(kernel, agent={"id": "crawler"})
        async def crawl() -> str:
            await asyncio.sleep(30)
            return "done"

        async def main() -> str:
            stop = switch.watch(interval_s=0.01)
            try:
                task = asyncio.create_task(crawl())
                await asyncio.to_thread(_wait, lambda: flaky.reads > 5)
                # as another process would: only the flag, no in-process cancellation
                kernel.state.set_flag("kill:agent:crawler", '{"by": "oncall"}')
                with pytest.raises(GovernanceDenied) as info:
                    await asyncio.wait_for(task, 10)
                return info.value.decision.code
            finally:
                stop()

        assert asyncio.run(main()) == "kill_switch"
        assert switch.watch_errors == 3
        errors = [e for e in audit if e["kind"] == "kill.watch_error"]
        assert len(errors) == 1 and "database is locked" in errors[0]["error"]


def _code_kernel(tmp_path: Path) -> tuple[Kernel, IsolationGuard]:
    """A kernel whose rings let ``code`` run at NONE: the race, not the isolation, is tested
    (so it runs on every machine)."""
    kernel = Kernel.from_text(POLICY, audit=False, state=tmp_path / "s.db", catalog=CATALOG)
    rings = RingGuard(CATALOG, ring_of=lambda agent: 1, state=kernel.state)
    isolation = IsolationGuard(CATALOG, rings, capabilities=detect_isolation(),
                               required=dict.fromkeys(range(4), IsolationLevel.NONE))
    kernel.add_guard(rings)
    kernel.add_guard(isolation)
    return kernel, isolation


def test_a_kill_between_the_decision_and_the_sandbox_start_stops_the_run(
        tmp_path: Path) -> None:
    marker = tmp_path / "effect"
    kernel, isolation = _code_kernel(tmp_path)
    with kernel:
        switch = KillSwitch.for_kernel(kernel)
        engaged: list[str] = []

        def engage_after_the_check(action: Any, tool: str, agent_id: str) -> None:
            if not engaged:  # the kill flags were already read for this decision
                engaged.append(switch.engage(by="oncall", agent="analyst")[0])

        kernel.add_guard(engage_after_the_check)
        run = code_tool(kernel, isolation, agent_id="analyst",
                        policy=SandboxPolicy(required_level=IsolationLevel.NONE, timeout_s=20))
        result = run(f"import time\ntime.sleep(2)\nopen({str(marker)!r}, 'w').write('x')\n")
        assert engaged == ["kill:agent:analyst"]
        assert result.killed_reason == "kill_switch" and not marker.exists(), result
        with pytest.raises(GovernanceDenied) as info:
            run("print(1)")
        assert info.value.decision.code == "kill_switch"


def test_a_tool_kill_in_another_spelling_stops_the_running_sandbox(tmp_path: Path) -> None:
    kernel, isolation = _code_kernel(tmp_path)
    with kernel:
        switch = KillSwitch.for_kernel(kernel)
        run = code_tool(kernel, isolation, agent_id="analyst", name="Run_Python",
                        policy=SandboxPolicy(required_level=IsolationLevel.NONE, timeout_s=30))
        before = running_sandboxes()

        def kill_when_running() -> None:
            if _wait(lambda: running_sandboxes() > before):
                switch.engage(by="oncall", tool="RUN_PYTHON")

        killer = threading.Thread(target=kill_when_running)
        killer.start()
        started = time.monotonic()
        result = run("import time\ntime.sleep(20)\n")
        killer.join()
        assert result.killed_reason == "kill_switch", result
        assert time.monotonic() - started < 15
        for spelling in ("run_python", "RUN_PYTHON", "run\u200b_python", "ｒｕｎ_python"):
            d = kernel.evaluate(Action(tool=spelling, agent={"id": "analyst"}))
            assert d.code == "kill_switch", spelling


def test_a_kill_between_the_decision_and_an_async_call_stops_it(tmp_path: Path) -> None:
    with Kernel.from_text(POLICY, audit=False, state=tmp_path / "s.db") as kernel:
        switch = KillSwitch.for_kernel(kernel)
        ran: list[str] = []

        def engage_after_the_check(action: Any, tool: str, agent_id: str) -> None:
            if not ran:
                ran.append("engaged")
                switch.engage(by="oncall", agent="crawler")

        kernel.add_guard(engage_after_the_check)

        @govern(kernel, agent={"id": "crawler"})
        async def wire_money() -> str:
            ran.append("wired")
            return "sent"

        with pytest.raises(GovernanceDenied):
            asyncio.run(wire_money())
        assert ran == ["engaged"]
