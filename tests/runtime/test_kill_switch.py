"""The kill switch stops running async calls, denies later ones, across processes, audited."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bastion import Action, ConfigError, GovernanceDenied, Kernel, govern
from bastion.audit import read_events
from bastion.runtime._kill import KillSwitch, flag_key

POLICY = "version: 1\nrules:\n  - {id: all, effect: allow}\n"
BASTION = Path(sys.executable).with_name("bastion")


def test_a_blank_identity_engages_and_releases_nothing(tmp_path: Path) -> None:
    with Kernel.from_text(POLICY, audit=tmp_path / "audit.db", state=tmp_path / "s.db") as k:
        switch = KillSwitch(k.state, audit=k.audit)
        with pytest.raises(ConfigError, match="identity"):
            switch.engage(by="  ", everything=True)
        switch.engage(by="ops", everything=True)
        with pytest.raises(ConfigError, match="identity"):
            switch.release(by=" \t", everything=True)
        assert "kill:all" in k.state.flags()


def test_flag_keys() -> None:
    assert flag_key(everything=True) == "kill:all"
    assert flag_key(agent="a-1") == "kill:agent:a-1"
    assert flag_key(tool="Send\u200b_Email") == "kill:tool:send_email"
    for bad in ({}, {"agent": "a", "session": "s"}, {"tool": "sеnd"}):
        with pytest.raises(ConfigError):
            flag_key(**bad)  # type: ignore[arg-type]


def test_engage_cancels_a_running_call_and_denies_the_next(tmp_path: Path) -> None:
    with Kernel.from_text(POLICY, audit=tmp_path / "audit.db",
                          state=tmp_path / "state.db") as kernel:
        switch = KillSwitch.for_kernel(kernel)
        stopped: list[str] = []
        switch.on_engage(stopped.append)

        @govern(kernel, agent={"id": "agent-7"}, session={"id": "s1"})
        async def crawl(url: str) -> str:
            await asyncio.sleep(30)
            return "done"

        async def main() -> tuple[float, str]:
            task = asyncio.create_task(crawl("u"))
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            key, cancelled = switch.engage(by="oncall", reason="runaway", agent="agent-7")
            assert (key, cancelled) == ("kill:agent:agent-7", 1)
            with pytest.raises(GovernanceDenied) as info:
                await task
            return time.perf_counter() - t0, info.value.decision.code

        elapsed, code = asyncio.run(main())
        assert code == "kill_switch" and elapsed < 1.0 and stopped == ["kill:agent:agent-7"]
        d = kernel.evaluate(Action(tool="crawl", agent={"id": "agent-7"}))
        assert d.code == "kill_switch"
        assert kernel.evaluate(Action(tool="crawl", agent={"id": "other"})).allowed
        assert switch.engaged()["kill:agent:agent-7"]["by"] == "oncall"
        with pytest.raises(ConfigError):
            switch.release(by="", agent="agent-7")
        for sneaky in ("agent-7", "AGENT-7", "agent\u200b-7"):
            with pytest.raises(ConfigError, match="its own"):
                switch.release(by=sneaky, agent="agent-7")
        with pytest.raises(ConfigError, match="audited"):
            KillSwitch(kernel.state).release(by="lead", agent="agent-7")
        with pytest.raises(ConfigError, match="may not"):
            KillSwitch(kernel.state, audit=kernel.audit, releasers=["lead"]).release(
                by="intern", agent="agent-7")
        assert switch.release(by="lead", reason="fixed", agent="agent-7")
        assert not switch.release(by="lead", agent="agent-7")
        assert kernel.evaluate(Action(tool="crawl", agent={"id": "agent-7"})).allowed
        kernel.audit.flush()
        kinds = [e["kind"] for e in read_events(tmp_path / "audit.db")]
        assert "kill.engage" in kinds and "kill.release" in kinds


WORKER = """
import asyncio, sys, time
from bastion import Action, GovernanceDenied, Kernel, govern
from bastion.runtime._kill import KillSwitch

state = sys.argv[1]
with Kernel.from_text("version: 1\\nrules:\\n  - {id: all, effect: allow}\\n", audit=False,
                      state=state) as kernel:
    stop = KillSwitch.for_kernel(kernel).watch(interval_s=0.02)

    @govern(kernel, agent={"id": "worker"})
    async def long_job() -> str:
        await asyncio.sleep(30)
        return "finished"

    async def main() -> None:
        print("started", flush=True)
        t0 = time.monotonic()
        try:
            print(await long_job(), flush=True)
        except GovernanceDenied as denied:
            print("killed", denied.decision.code, round(time.monotonic() - t0, 3), flush=True)
        d = kernel.evaluate(Action(tool="long_job", agent={"id": "worker"}))
        print("next", d.effect, d.code, flush=True)

    asyncio.run(main())
    stop()
"""


@pytest.fixture(params=["sqlite", "redis"])
def shared_state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A state store other processes can open: a SQLite file, or Redis (``redis_url``)."""
    if request.param == "sqlite":
        return str(tmp_path / "state.db")
    return str(request.getfixturevalue("redis_url"))


def test_kill_from_another_process_cancels_and_denies(tmp_path: Path, shared_state: str) -> None:
    state = shared_state
    Kernel.from_text(POLICY, audit=False, state=state).close()  # create the store
    worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER), str(state)],
                              stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "started"
    time.sleep(0.2)
    t0 = time.perf_counter()
    run = subprocess.run([str(BASTION), "kill", "--all", "--state", str(state), "--by", "ops",
                          "--reason", "incident 42"], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    out, _ = worker.communicate(timeout=20)
    elapsed = time.perf_counter() - t0
    killed, nxt = out.strip().splitlines()
    assert killed.startswith("killed kill_switch")
    assert nxt == "next deny kill_switch"
    assert elapsed < 10
    listed = subprocess.run([str(BASTION), "kills", "--state", str(state)],
                            capture_output=True, text=True, check=True).stdout
    assert '"flag": "kill:all"' in listed and "incident 42" in listed
    unaudited = subprocess.run([str(BASTION), "release", "--all", "--state", str(state),
                                "--by", "lead"], capture_output=True, text=True, check=False)
    assert unaudited.returncode == 2 and "must be audited" in unaudited.stderr
    rel = subprocess.run([str(BASTION), "release", "--all", "--state", str(state), "--by",
                          "lead", "--audit", str(tmp_path / "audit.db")], capture_output=True,
                         text=True, check=False)
    assert rel.returncode == 0 and "released" in rel.stdout
    with Kernel.from_text(POLICY, audit=False, state=state) as k:
        assert k.evaluate(Action(tool="long_job")).allowed


def test_killing_the_fleet_stops_running_sandboxes(tmp_path: Path) -> None:
    import threading

    from bastion.runtime import IsolationLevel, Sandbox, SandboxPolicy

    results = []
    sandbox = Sandbox(SandboxPolicy(required_level=IsolationLevel.NONE, timeout_s=20))
    runner = threading.Thread(target=lambda: results.append(
        sandbox.run(["sleep", "15"])))
    with Kernel.from_text(POLICY, audit=False, state=tmp_path / "s.db") as kernel:
        runner.start()
        time.sleep(0.5)
        t0 = time.perf_counter()
        KillSwitch.for_kernel(kernel).engage(by="oncall", everything=True)
        runner.join(timeout=10)
        assert not runner.is_alive() and time.perf_counter() - t0 < 5
    assert results[0].killed_reason == "kill_switch"


def test_a_tool_that_swallows_the_cancellation_still_gets_denied(tmp_path: Path) -> None:
    with Kernel.from_text(POLICY, audit=False, state=tmp_path / "s.db") as kernel:
        switch = KillSwitch.for_kernel(kernel)

        @govern(kernel, agent={"id": "sneaky"})
        async def commit() -> str:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                return "side effect committed after kill"
            return "done"

        async def main() -> str:
            task = asyncio.create_task(commit())
            await asyncio.sleep(0.05)
            switch.engage(by="oncall", agent="sneaky")
            with pytest.raises(GovernanceDenied) as info:
                await task
            return info.value.decision.code

        assert asyncio.run(main()) == "kill_switch"


SANDBOX_WORKER = """
import sys, time
from bastion import Kernel
from bastion.flow import parse_catalog
from bastion.runtime import IsolationGuard, KillSwitch, RingGuard, code_tool

catalog = parse_catalog("version: 1\\ntools:\\n  run_python: {class: code}\\n")
with Kernel.from_text("version: 1\\nrules:\\n  - {id: all, effect: allow}\\n", audit=False,
                      state=sys.argv[1], catalog=catalog) as kernel:
    rings = RingGuard(catalog, ring_of=lambda a: 1, state=kernel.state)
    isolation = IsolationGuard(catalog, rings)
    kernel.add_guard(rings)
    kernel.add_guard(isolation)
    stop = KillSwitch.for_kernel(kernel).watch(interval_s=0.02)
    run = code_tool(kernel, isolation, agent_id="coder", session={"id": "s9"})
    print("started", flush=True)
    t0 = time.monotonic()
    result = run("import time; time.sleep(20)")
    print(result.killed_reason, round(time.monotonic() - t0, 2), flush=True)
    stop()
"""


def test_a_scoped_kill_in_another_process_stops_that_agents_sandbox(tmp_path: Path) -> None:
    from bastion.runtime import IsolationLevel, detect_isolation

    if IsolationLevel.BWRAP not in detect_isolation().levels:
        pytest.skip(f"bwrap unavailable: {detect_isolation().notes}")
    state = tmp_path / "state.db"
    Kernel.from_text(POLICY, audit=False, state=state).close()
    worker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SANDBOX_WORKER), str(state)],
                              stdout=subprocess.PIPE, text=True)
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "started"
    time.sleep(0.5)
    run = subprocess.run([str(BASTION), "kill", "--agent", "coder", "--state", str(state),
                          "--by", "ops"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    out, _ = worker.communicate(timeout=30)
    reason, elapsed = out.split()
    assert reason == "kill_switch" and float(elapsed) < 10
