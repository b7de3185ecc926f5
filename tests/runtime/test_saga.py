"""Sagas: write-ahead logging, compensation in reverse with retries, escalation, resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bastion import BastionError
from bastion.runtime import (
    RetryPolicy,
    SagaAlert,
    SagaError,
    SagaLog,
    SagaRegistry,
    SagaRunner,
    SagaStuck,
    Step,
    StepContext,
)

NAMES = ("reserve", "pay", "ship", "notify")


class Crash(BaseException):
    """Stands in for the process dying in the middle of a step (not an ``Exception``)."""


class World:
    """Steps whose actions and compensations record what they did and can be told to fail."""

    def __init__(self, log: SagaLog):
        self.log = log
        self.calls: list[tuple[str, str]] = []
        self.keys: list[str] = []
        self.fail_action: dict[str, int] = {}  # step -> number of failures left (-1: forever)
        self.fail_comp: dict[str, int] = {}
        self.crash_in: str = ""
        self.seen_status: dict[str, str] = {}

    @staticmethod
    def _trip(table: dict[str, int], step: str) -> bool:
        left = table.get(step, 0)
        if left == 0:
            return False
        table[step] = left - 1 if left > 0 else -1
        return True

    def steps(self) -> list[Step]:
        def make(name: str) -> Step:
            def action(ctx: StepContext) -> Any:
                rec = self.log.get(ctx.saga_id)
                assert rec is not None
                self.seen_status[name] = next(s.status for s in rec.steps if s.name == name)
                self.calls.append(("action", name))
                self.keys.append(ctx.idempotency_key)
                if self.crash_in == name:
                    raise Crash
                if self._trip(self.fail_action, name):
                    raise RuntimeError(f"{name} broke")
                return {"name": name, "saw": sorted(ctx.results)}

            def compensate(ctx: StepContext, result: Any) -> None:
                assert result == {"name": name, "saw": sorted(NAMES[:NAMES.index(name)])}
                self.calls.append(("compensate", name))
                if self._trip(self.fail_comp, name):
                    raise RuntimeError(f"undo {name} broke")

            return Step(name, action, compensate)

        return [make(n) for n in NAMES]


@pytest.fixture
def world() -> World:
    return World(SagaLog(":memory:"))


def runner(world: World, **kw: Any) -> tuple[SagaRunner, list[float], list[SagaAlert]]:
    reg = SagaRegistry()
    reg.register("trip", world.steps())
    sleeps: list[float] = []
    alerts: list[SagaAlert] = []
    r = SagaRunner(reg, world.log, sleep=sleeps.append, alert=alerts.append,
                   retry=RetryPolicy(max_attempts=3, base_delay_s=0.1), **kw)
    return r, sleeps, alerts


def test_happy_path_logs_before_and_after_each_step(world: World) -> None:
    r, sleeps, _ = runner(world)
    out = r.run("trip", {"who": "ada"}, saga_id="s1")
    assert out.status == "completed" and out.failed_step is None
    assert out.results["notify"] == {"name": "notify", "saw": ["pay", "reserve", "ship"]}
    assert world.seen_status == dict.fromkeys(NAMES, "started")  # written before running
    assert all(s.status == "done" for s in world.log.get("s1").steps)  # type: ignore[union-attr]
    kinds = [e.kind for e in world.log.events("s1")]
    assert kinds == ["saga_started"] + ["step_started", "step_done"] * 4 + ["saga_completed"]
    assert world.keys == [f"s1:{n}" for n in NAMES] and sleeps == []


@pytest.mark.parametrize("failing", range(len(NAMES)))
def test_failure_at_every_step_compensates_the_done_ones_in_reverse(world: World,
                                                                    failing: int) -> None:
    world.fail_action[NAMES[failing]] = -1
    r, _, alerts = runner(world)
    out = r.run("trip", saga_id="s1")
    assert out.status == "compensated" and out.failed_step == NAMES[failing]
    assert "broke" in out.error and alerts == []
    done = list(NAMES[:failing])
    assert world.calls == ([("action", n) for n in done] + [("action", NAMES[failing])] +
                           [("compensate", n) for n in reversed(done)])


def test_compensation_retries_with_exponential_backoff(world: World) -> None:
    world.fail_action["ship"] = -1
    world.fail_comp["pay"] = 2
    r, sleeps, alerts = runner(world)
    out = r.run("trip", saga_id="s1")
    assert out.status == "compensated" and alerts == []
    assert sleeps == [0.1, 0.2]
    assert Counter(world.calls)[("compensate", "pay")] == 3
    assert Counter(world.calls)[("compensate", "reserve")] == 1


@pytest.mark.parametrize("stuck_at", NAMES[:3])
def test_compensation_that_keeps_failing_escalates_and_the_saga_is_stuck(world: World,
                                                                         stuck_at: str) -> None:
    world.fail_action["notify"] = -1
    world.fail_comp[stuck_at] = -1
    r, sleeps, alerts = runner(world)
    out = r.run("trip", saga_id="s1")
    assert out.status == "stuck" and out.failed_step == stuck_at
    assert len(alerts) == 1 and alerts[0].step == stuck_at and alerts[0].attempts == 3
    assert "undo" in alerts[0].error and sleeps == [0.1, 0.2]
    earlier = NAMES[:NAMES.index(stuck_at)]
    assert not any(c == ("compensate", n) for c in world.calls for n in earlier)
    assert any(e.kind == "escalated" and e.step == stuck_at for e in world.log.events("s1"))
    before = list(world.calls)
    with pytest.raises(SagaStuck) as err:
        r.resume("s1")
    assert isinstance(err.value, BastionError) and err.value.step == stuck_at
    with pytest.raises(SagaStuck):
        r.run("trip", saga_id="s1")
    assert r.resume_all() == [] and world.calls == before  # it executes nothing more


def test_a_recorded_saga_and_recorded_steps_are_never_run_again(world: World) -> None:
    r, _, _ = runner(world)
    r.run("trip", saga_id="s1")
    again = r.run("trip", saga_id="s1")
    assert again.status == "completed" and len(world.calls) == len(NAMES)


def test_action_retries_reuse_the_idempotency_key(world: World) -> None:
    reg = SagaRegistry()
    steps = world.steps()
    steps[1] = Step("pay", steps[1].action, steps[1].compensation, max_attempts=3)
    reg.register("trip", steps)
    world.fail_action["pay"] = 2
    sleeps: list[float] = []
    out = SagaRunner(reg, world.log, sleep=sleeps.append).run("trip", saga_id="s1")
    assert out.status == "completed" and sleeps == [0.1, 0.2]
    assert world.keys.count("s1:pay") == 3
    assert world.log.get("s1").steps[1].attempts == 3  # type: ignore[union-attr]


def test_resume_after_a_crash_finishes_without_rerunning_done_steps(world: World) -> None:
    now = [1000.0]
    r, _, _ = runner(world, clock=lambda: now[0], lease_s=5)
    world.crash_in = "ship"
    with pytest.raises(Crash):
        r.run("trip", saga_id="s1")
    assert world.log.unfinished() == ["s1"]
    world.crash_in = ""
    assert world.log.claim("s1", "dead-process", now[0], 5)  # a killed runner's lease stays
    other, _, _ = runner(world, clock=lambda: now[0], lease_s=5, owner="second")
    with pytest.raises(SagaError, match="leased by another runner"):
        other.resume("s1")
    assert other.resume_all() == []  # a live lease is respected
    now[0] += 6
    [out] = other.resume_all()
    assert out.status == "completed"
    assert Counter(c for c in world.calls if c[0] == "action") == {
        ("action", "reserve"): 1, ("action", "pay"): 1, ("action", "ship"): 2,
        ("action", "notify"): 1}
    assert world.keys.count("s1:ship") == 2  # the re-run reused its key


def test_registry_and_definition_errors(world: World) -> None:
    reg = SagaRegistry()
    with pytest.raises(SagaError):
        reg.register("empty", [])
    with pytest.raises(SagaError):
        reg.register("dup", [Step("a", lambda c: 1), Step("a", lambda c: 2)])
    r = SagaRunner(reg, world.log)
    with pytest.raises(SagaError, match="not registered"):
        r.run("nope")
    with pytest.raises(SagaError, match="not found"):
        r.resume("missing")


# -- a real crash: SIGKILL a worker process mid-saga, resume in another process ------------------

WORKER = Path(__file__).with_name("saga_worker.py")


def _worker(tmp: Path, mode: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), str(tmp / "saga.db"),
                             str(tmp / "fx.db"), mode, *extra], stdout=subprocess.PIPE,
                            text=True)


@pytest.mark.parametrize(("hang", "fail", "final", "actions", "compensations"), [
    ("action:pay:after", "", "completed", {"reserve", "pay", "ship"}, set()),
    ("action:pay:before", "", "completed", {"reserve", "pay", "ship"}, set()),
    ("compensate:pay:after", "ship", "compensated", {"reserve", "pay"}, {"reserve", "pay"}),
])
def test_sigkill_mid_saga_then_resume_in_another_process(
        tmp_path: Path, hang: str, fail: str, final: str, actions: set[str],
        compensations: set[str]) -> None:
    extra = ["--hang", hang] + (["--fail", fail] if fail else [])
    proc = _worker(tmp_path, "run", *extra)
    deadline = time.monotonic() + 10
    while not (tmp_path / "fx.db.hung").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "worker never reached hang"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert SagaLog(str(tmp_path / "saga.db")).unfinished() == ["saga-1"]
    time.sleep(0.6)  # the dead worker's lease (0.5 s) runs out
    resumed = _worker(tmp_path, "resume")
    out, _ = resumed.communicate(timeout=20)
    assert resumed.returncode == 0 and out.strip() == final
    fx = sqlite3.connect(tmp_path / "fx.db")
    effects = Counter(fx.execute("select kind, step from effects").fetchall())
    assert all(n == 1 for n in effects.values()), effects  # exactly once each
    assert {s for k, s in effects if k == "action"} == actions
    assert {s for k, s in effects if k == "compensate"} == compensations
    calls = Counter(fx.execute("select kind, step from calls").fetchall())
    assert calls[(hang.split(":")[0], "pay")] == 2  # the interrupted call really ran twice
    assert SagaLog(str(tmp_path / "saga.db")).unfinished() == []


def test_review_findings_non_json_results_and_one_broken_saga(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A step whose result is not JSON still counts as done (and is compensated); a saga whose
    definition changed does not stop resume_all from finishing the others."""
    import datetime as _dt

    from bastion.runtime import SagaLog, SagaRegistry, SagaRunner, Step

    done: list[str] = []
    registry = SagaRegistry()
    registry.register("order", [
        Step("reserve", lambda ctx: done.append("reserve") or "r",
             lambda ctx, result: done.append("release")),
        Step("charge", lambda ctx: done.append("charge") or _dt.datetime(2026, 1, 1),
             lambda ctx, result: done.append("refund")),
        Step("ship", lambda ctx: (_ for _ in ()).throw(RuntimeError("no courier")),
             lambda ctx, result: done.append("unship")),
    ])
    runner = SagaRunner(registry, SagaLog(str(tmp_path / "s.db")), sleep=lambda s: None)
    outcome = runner.run("order", {})
    assert done == ["reserve", "charge", "refund", "release"], (done, outcome)


def test_review_findings_concurrency_names_and_audited_escalation(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading

    from bastion.audit import AuditLog, read_events
    from bastion.runtime import SagaError, SagaLog, SagaRegistry, SagaRunner, Step

    registry = SagaRegistry()
    with pytest.raises(SagaError, match="without ':'"):
        registry.register("bad", [Step("x:compensate", lambda ctx: 1)])
    with pytest.raises(SagaError, match="unique"):
        registry.register("dup", [Step("a", lambda ctx: 1), Step("a", lambda ctx: 2)])

    gate, runs = threading.Event(), []

    def slow(ctx):  # type: ignore[no-untyped-def]
        runs.append(ctx.step)
        gate.wait(5)
        return "ok"

    registry.register("slow", [Step("only", slow)])
    runner = SagaRunner(registry, SagaLog(str(tmp_path / "s.db")), sleep=lambda s: None)
    first = threading.Thread(target=lambda: runner.run("slow", {}, saga_id="x"))
    first.start()
    while not runs:
        pass
    with pytest.raises(SagaError, match="already being driven"):
        runner.resume("x")
    gate.set()
    first.join()
    assert runs == ["only"]

    def boom(ctx, result):  # type: ignore[no-untyped-def]
        raise RuntimeError("refund service down")

    registry.register("stuck", [Step("charge", lambda ctx: "c", boom),
                                Step("ship", lambda ctx: (_ for _ in ()).throw(OSError("x")))])
    with AuditLog.open(tmp_path / "a.db") as log:
        runner = SagaRunner(registry, SagaLog(":memory:"), sleep=lambda s: None, audit=log)
        assert runner.run("stuck", {}).status == "stuck"
    events = [e for e in read_events(tmp_path / "a.db") if e["kind"] == "saga.escalated"]
    assert len(events) == 1 and events[0]["step"] == "charge"
