"""Third review of execution control (``bastion.runtime``): sandbox policy validation, the
wall-clock timeout at level NONE, the kill switch reaching this process's sandboxes, races in
``kill_sandboxes``, and sagas (retry policy types, escalation alerts, lease checks).

Every test asserts the behaviour the docs promise; each failed before its fix."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bastion import Kernel
from bastion._errors import ConfigError
from bastion.flow import parse_catalog
from bastion.runtime import (
    IsolationGuard,
    IsolationLevel,
    KillSwitch,
    RetryPolicy,
    RingGuard,
    SagaAlert,
    SagaError,
    SagaLog,
    SagaRegistry,
    SagaRunner,
    Sandbox,
    SandboxError,
    SandboxPolicy,
    Step,
    StepContext,
    code_tool,
    detect_isolation,
    kill_all_sandboxes,
    running_sandboxes,
)
from bastion.runtime import _isolation as isolation_mod
from bastion.runtime import _sandbox as sandbox_mod

POLICY = "version: 1\nrules:\n  - {id: all, effect: allow}\n"
CATALOG = parse_catalog("version: 1\ntools:\n  run_python: {class: code}\n")


def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def _needs_cgroup() -> None:
    caps = detect_isolation()
    if not (caps.pids or "").startswith("cgroup") or IsolationLevel.RLIMITS not in caps.levels:
        pytest.skip(f"no writable pids cgroup here: {caps.notes}")


# -- sandbox policy --------------------------------------------------------------------------

@pytest.mark.parametrize("field", [
    {"cpu_seconds": 0.5},
    {"max_open_files": 64.5},
    {"max_output_bytes": 100.0},
    {"memory_bytes": 2**70},
    {"timeout_s": "5"},
], ids=["cpu_seconds", "max_open_files", "max_output_bytes", "memory_bytes_huge",
        "timeout_str"])
def test_a_limit_the_kernel_cannot_apply_is_a_config_error(field: dict[str, Any]) -> None:
    """docs: "Parsed once; invalid values raise ConfigError". A limit setrlimit/slicing cannot
    take is invalid and must be refused when the policy is made, not when code runs."""
    with pytest.raises(ConfigError):
        SandboxPolicy(required_level=IsolationLevel.RLIMITS, **field)


def test_the_wall_clock_timeout_bounds_a_run_at_level_none() -> None:
    code = ("import os, sys, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    print(os.getpid(), flush=True)\n"
            "    os.close(1); os.close(2)\n"
            "    time.sleep(5)\n"
            "    os._exit(0)\n")
    policy = SandboxPolicy(required_level=IsolationLevel.NONE, timeout_s=1.0)
    started = time.monotonic()
    result = Sandbox(policy).run_python(code, stdin=b"x" * (1 << 20))
    elapsed = time.monotonic() - started
    survivor = int(result.stdout.split()[0]) if result.stdout.strip() else None
    alive = False
    if survivor is not None:
        try:
            state = Path(f"/proc/{survivor}/stat").read_text().split(") ")[1][0]
            alive = state != "Z"
        except (OSError, IndexError):
            alive = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(survivor, signal.SIGKILL)
    assert elapsed < 3.0, f"run took {elapsed:.1f} s with timeout_s=1"
    if (detect_isolation().pids or "").startswith("cgroup"):  # docs: without one it can
        assert not alive, "a descendant outlived the run"


# -- the kill switch and this process's sandboxes ----------------------------------------------

def _code_kernel(tmp_path: Path) -> tuple[Kernel, IsolationGuard]:
    """Rings let ``code`` run at NONE: the kill switch, not the isolation, is tested."""
    kernel = Kernel.from_text(POLICY, audit=str(tmp_path / "audit.db"),
                              state=str(tmp_path / "s.db"), catalog=CATALOG)
    rings = RingGuard(CATALOG, ring_of=lambda agent: 1, state=kernel.state)
    guard = IsolationGuard(CATALOG, rings, capabilities=detect_isolation(),
                           required=dict.fromkeys(range(4), IsolationLevel.NONE))
    kernel.add_guard(rings)
    kernel.add_guard(guard)
    return kernel, guard


def test_engaging_here_stops_the_sandboxes_running_here(tmp_path: Path) -> None:
    kernel, guard = _code_kernel(tmp_path)
    with kernel:
        run = code_tool(kernel, guard, agent_id="analyst",
                        policy=SandboxPolicy(required_level=IsolationLevel.NONE, timeout_s=4.0))
        before = running_sandboxes()
        out: dict[str, Any] = {}

        def go() -> None:
            started = time.monotonic()
            out["result"] = run("import time\ntime.sleep(30)\n")
            out["elapsed"] = time.monotonic() - started

        worker = threading.Thread(target=go)
        worker.start()
        assert _wait(lambda: running_sandboxes() > before)
        switch = KillSwitch(kernel.state, audit=kernel.audit)  # as the README shows it
        switch.engage(by="oncall", reason="runaway", agent="analyst")
        worker.join()
        assert out["result"].killed_reason == "kill_switch", out
        assert out["elapsed"] < 3.0


def test_one_failing_kill_does_not_spare_the_other_sandboxes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_cgroup()
    original = isolation_mod.PidsCgroup.kill
    failed: list[bool] = []

    def flaky_kill(self: Any) -> None:
        if not failed:  # the first cgroup was removed under the kill (cgroup v2 race)
            failed.append(True)
            raise FileNotFoundError(2, "No such file or directory", "cgroup.kill")
        original(self)

    policy = SandboxPolicy(required_level=IsolationLevel.RLIMITS, timeout_s=4.0)
    before = running_sandboxes()
    results: list[Any] = []

    def go() -> None:
        started = time.monotonic()
        result = Sandbox(policy).run_python("import time\ntime.sleep(30)\n")
        results.append((result.killed_reason, time.monotonic() - started))

    workers = [threading.Thread(target=go) for _ in range(2)]
    for w in workers:
        w.start()
    assert _wait(lambda: running_sandboxes() >= before + 2)
    monkeypatch.setattr(isolation_mod.PidsCgroup, "kill", flaky_kill)
    with pytest.raises(SandboxError, match="1 of 2 runs could not be killed"):
        kill_all_sandboxes("kill_switch")  # the others killed all the same, then reported
    monkeypatch.setattr(isolation_mod.PidsCgroup, "kill", original)
    for w in workers:
        w.join()
    assert [r for r, _ in results] == ["kill_switch", "kill_switch"], results
    assert all(elapsed < 3.0 for _, elapsed in results), results


def test_a_late_kill_never_signals_a_reaped_process_group(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reaped: dict[int, float] = {}
    signalled: list[tuple[int, float]] = []
    real_wait4, real_killpg = os.wait4, os.killpg
    original_kill = sandbox_mod._Live.kill
    reaped_event = threading.Event()

    def wait4(pid: int, options: int) -> Any:
        out = real_wait4(pid, options)
        reaped[pid] = time.monotonic()
        reaped_event.set()
        return out

    def killpg(pgid: int, sig: int) -> None:
        signalled.append((pgid, time.monotonic()))
        real_killpg(pgid, sig)

    def slow_kill(self: Any, reason: str) -> None:
        if reason == "late":  # the kill switch thread is preempted after taking its snapshot
            reaped_event.wait(5.0)
        original_kill(self, reason)

    monkeypatch.setattr(os, "wait4", wait4)
    monkeypatch.setattr(os, "killpg", killpg)
    monkeypatch.setattr(sandbox_mod._Live, "kill", slow_kill)
    before = running_sandboxes()
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(Sandbox(SandboxPolicy(
        required_level=IsolationLevel.NONE, timeout_s=5.0)).run_python(
            "import time\ntime.sleep(0.3)\n")))
    worker.start()
    assert _wait(lambda: running_sandboxes() > before)
    # the snapshot is taken while the run is live; the signals go out after it was reaped
    sandbox_mod.kill_sandboxes(lambda labels: True, "late")
    worker.join()
    late = [(pgid, at) for pgid, at in signalled if pgid in reaped and at > reaped[pgid]]
    assert late == [], f"killpg after the leader was reaped: {late}"


# -- sagas -------------------------------------------------------------------------------------

def _fail(ctx: StepContext) -> Any:
    raise RuntimeError("card declined")


def test_a_retry_policy_the_runner_cannot_use_is_refused_up_front() -> None:
    undone: list[str] = []
    try:
        retry = RetryPolicy(max_attempts=2.5)  # type: ignore[arg-type]
    except SagaError:
        return  # refused up front: fine
    registry = SagaRegistry()
    registry.register("book", [Step("reserve", lambda ctx: "seat",
                                    lambda ctx, r: undone.append(ctx.idempotency_key)),
                               Step("pay", _fail)])
    runner = SagaRunner(registry, SagaLog(":memory:"), retry=retry, sleep=lambda s: None)
    outcome = runner.run("book", {}, saga_id="o1")
    assert outcome.status == "compensated" and undone == ["o1:reserve:compensate"]


class _BrokenAudit:
    def append(self, event: Any) -> None:
        raise OSError("audit log disk full")


def test_an_escalation_alerts_even_when_the_audit_log_fails() -> None:
    alerts: list[SagaAlert] = []

    def release(ctx: StepContext, result: Any) -> None:
        raise RuntimeError("inventory service down")

    registry = SagaRegistry()
    registry.register("book", [Step("reserve", lambda ctx: "seat", release), Step("pay", _fail)])
    runner = SagaRunner(registry, SagaLog(":memory:"), retry=RetryPolicy(max_attempts=2),
                        sleep=lambda s: None, alert=alerts.append, audit=_BrokenAudit())
    with contextlib.suppress(Exception):
        runner.run("book", {}, saga_id="o1")
    assert runner.log.get("o1").status == "stuck"  # type: ignore[union-attr]
    runner.resume_all()  # an operator's periodic sweep: stuck sagas are skipped
    assert [a.step for a in alerts] == ["reserve"]


def test_a_runner_that_lost_its_lease_writes_no_compensation_error() -> None:
    log = SagaLog(":memory:")
    now = [1000.0]

    def release(ctx: StepContext, result: Any) -> None:
        if ctx.attempt == 1:  # runner A stalls: its lease runs out and B takes the saga over
            now[0] += 60
            assert log.claim(ctx.saga_id, "b", now[0], 30.0)
            raise TimeoutError("inventory service timed out")

    registry = SagaRegistry()
    registry.register("book", [Step("reserve", lambda ctx: "seat", release), Step("pay", _fail)])
    a = SagaRunner(registry, log, clock=lambda: now[0], lease_s=10, owner="a",
                   sleep=lambda s: None, retry=RetryPolicy(max_attempts=3))
    with pytest.raises(SagaError, match="lease lost"):
        a.run("book", {}, saga_id="o1")
    rec = log.get("o1")
    assert rec is not None
    kinds = [e.kind for e in log.events("o1")]
    assert "compensation_error" not in kinds, kinds
    assert rec.steps[0].error == "", rec.steps[0]
