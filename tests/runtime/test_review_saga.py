"""Review of sagas (issue 6): saga ids and idempotency keys, a runner that lost its lease,
definitions that changed, damaged log rows, crashes between an effect and its log write,
concurrent resumes and escalation."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

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


class Crash(BaseException):
    """Stands in for the process dying (not an ``Exception``: nothing handles it)."""


class Ledger:
    """An external system that applies each effect at most once per idempotency key."""

    def __init__(self) -> None:
        self.applied: Counter[str] = Counter()  # effects that took place, by key
        self.calls: list[str] = []  # every call, including deduplicated ones

    def apply(self, key: str) -> str:
        self.calls.append(key)
        if key not in self.applied:
            self.applied[key] += 1
        return key

    def undo(self, key: str) -> None:
        self.calls.append(key)
        self.applied[key.removesuffix(":compensate")] = 0


def _registry(ledger: Ledger, **extra: list[Step]) -> SagaRegistry:
    registry = SagaRegistry()
    registry.register("book", [
        Step("reserve", lambda ctx: ledger.apply(ctx.idempotency_key),
             lambda ctx, result: ledger.undo(ctx.idempotency_key)),
        Step("pay", lambda ctx: ledger.apply(ctx.idempotency_key),
             lambda ctx, result: ledger.undo(ctx.idempotency_key)),
    ])
    for name, steps in extra.items():
        registry.register(name, steps)
    return registry


def _runner(registry: SagaRegistry, log: SagaLog, **kw: Any) -> SagaRunner:
    return SagaRunner(registry, log, sleep=lambda s: None, **kw)


def test_a_saga_id_names_one_saga_only() -> None:
    ledger = Ledger()
    registry = _registry(ledger, refund=[Step("pay", lambda ctx: "refunded")])
    runner = _runner(registry, SagaLog(":memory:"))
    assert runner.run("book", {"user": "ada"}, saga_id="order-1").status == "completed"
    assert runner.run("book", {"user": "ada"}, saga_id="order-1").status == "completed"
    for name, payload in (("refund", {"user": "ada"}), ("book", {"user": "eve"})):
        with pytest.raises(SagaError, match="already used"):
            runner.run(name, payload, saga_id="order-1")
    assert ledger.calls == ["order-1:reserve", "order-1:pay"]


def test_saga_ids_cannot_make_two_steps_share_an_idempotency_key() -> None:
    """Saga "x:pay" step "compensate" would share "x:pay:compensate" with the compensation of
    step "pay" of saga "x" (step names already may not hold ':')."""
    ledger = Ledger()
    registry = _registry(ledger, tricky=[Step("compensate", lambda ctx: ctx.idempotency_key)])
    runner = _runner(registry, SagaLog(":memory:"))
    for bad in ("x:pay", ":", "a:b:c"):
        with pytest.raises(SagaError, match="without ':'"):
            runner.run("tricky", {}, saga_id=bad)
    runner.run("book", {}, saga_id="x")
    assert ledger.calls == ["x:reserve", "x:pay"]


def test_a_runner_that_lost_its_lease_cannot_reopen_a_finished_saga(tmp_path: Path) -> None:
    """Runner A stalls in a step past its lease; B takes the saga over and completes it. A's
    late failure must not flip the completed saga to compensating (which would later undo
    every step B completed)."""
    ledger = Ledger()
    log_a, log_b = SagaLog(str(tmp_path / "s.db")), SagaLog(str(tmp_path / "s.db"))
    now = [1000.0]
    late: list[SagaRunner] = []

    def reserve(ctx: StepContext) -> str:
        if ctx.attempt == 1 and late:  # A's first attempt: stall, then fail
            now[0] += 60  # the lease (10 s) runs out meanwhile; B resumes the saga
            assert late[0].resume(ctx.saga_id).status == "completed"
            raise TimeoutError("upstream timed out")
        return ledger.apply(ctx.idempotency_key)

    registry = _registry(ledger, slow=[Step("reserve", reserve,
                                            lambda ctx, r: ledger.undo(ctx.idempotency_key)),
                                       Step("pay", lambda ctx: ledger.apply(ctx.idempotency_key))])
    a = _runner(registry, log_a, clock=lambda: now[0], lease_s=10, owner="a")
    late.append(_runner(registry, log_b, clock=lambda: now[0], lease_s=10, owner="b"))
    with pytest.raises(SagaError, match="lease lost"):
        a.run("slow", {}, saga_id="s1")
    assert log_a.get("s1").status == "completed"  # type: ignore[union-attr]
    assert late[0].resume_all() == [] and a.resume_all() == []
    assert dict(ledger.applied) == {"s1:reserve": 1, "s1:pay": 1}


def test_a_changed_definition_runs_and_compensates_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    ledger = Ledger()
    first = SagaRegistry()
    first.register("order", [Step("reserve", lambda ctx: ledger.apply(ctx.idempotency_key)),
                             Step("pay", lambda ctx: (_ for _ in ()).throw(Crash()))])
    with pytest.raises(Crash):  # the process dies in step "pay"
        _runner(first, SagaLog(path)).run("order", {}, saga_id="o1")
    later = SagaRegistry()  # a deploy renamed and reordered the steps
    later.register("order", [Step("charge", lambda ctx: ledger.apply(ctx.idempotency_key)),
                             Step("reserve", lambda ctx: ledger.apply(ctx.idempotency_key))])
    runner = _runner(later, SagaLog(path), lease_s=0.0)
    with pytest.raises(SagaError, match="do not match"):
        runner.resume("o1")
    assert runner.resume_all() == []
    assert [e.kind for e in runner.log.events("o1")][-1] == "resume_failed"
    assert ledger.calls == ["o1:reserve"]


@pytest.mark.parametrize(("table", "column", "value"), [
    ("saga_steps", "result", "{not json"),
    ("saga_steps", "status", "dnoe"),
    ("sagas", "payload", "{not json"),
    ("sagas", "status", "runing"),
])
def test_a_damaged_log_row_is_an_error_not_a_guess(tmp_path: Path, table: str, column: str,
                                                   value: str) -> None:
    path = str(tmp_path / "s.db")
    ledger = Ledger()
    registry = _registry(ledger)
    registry.register("crashy", [
        Step("reserve", lambda ctx: ledger.apply(ctx.idempotency_key)),
        Step("pay", lambda ctx: (_ for _ in ()).throw(Crash()))])
    with pytest.raises(Crash):
        _runner(registry, SagaLog(path)).run("crashy", {}, saga_id="bad")
    with sqlite3.connect(path) as db:
        where = "saga_id='bad' and idx=0" if table == "saga_steps" else "id='bad'"
        db.execute(f"update {table} set {column}=? where {where}", (value,))
    runner = _runner(registry, SagaLog(path), lease_s=0.0)
    with pytest.raises(SagaError, match="corrupted"):
        runner.resume("bad")
    good = runner.run("book", {}, saga_id="good")
    outcomes = runner.resume_all()
    assert good.status == "completed" and outcomes == []
    assert [e.kind for e in runner.log.events("bad")][-1] == "resume_failed"
    assert ledger.calls == ["bad:reserve", "good:reserve", "good:pay"]


def test_a_crash_between_an_effect_and_its_log_write_reuses_the_key(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    ledger = Ledger()
    registry = _registry(ledger)
    log = SagaLog(path)
    real = log.step_done

    def crash_once(*args: Any, **kw: Any) -> None:
        log.step_done = real  # type: ignore[method-assign]
        raise Crash  # the process dies after the effect, before the write

    log.step_done = crash_once  # type: ignore[method-assign]
    with pytest.raises(Crash):
        _runner(registry, log).run("book", {}, saga_id="c1")
    assert ledger.calls == ["c1:reserve"]
    outcome = _runner(registry, SagaLog(path), lease_s=0.0).resume("c1")
    assert outcome.status == "completed"
    assert ledger.calls == ["c1:reserve", "c1:reserve", "c1:pay"]  # same key on the re-run
    assert dict(ledger.applied) == {"c1:reserve": 1, "c1:pay": 1}


def test_two_processes_resuming_one_saga_run_each_step_once(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    inside, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def slow(ctx: StepContext) -> str:
        runs.append(ctx.idempotency_key)
        inside.set()
        release.wait(5)
        return "ok"

    registry = SagaRegistry()
    registry.register("slow", [Step("only", slow)])
    SagaLog(path).create("s1", "slow", {}, ["only"], 0.0)
    first, second = _runner(registry, SagaLog(path)), _runner(registry, SagaLog(path))
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(first.resume("s1")))
    worker.start()
    assert inside.wait(5)
    with pytest.raises(SagaError, match="leased by another runner"):
        second.resume("s1")
    assert second.resume_all() == []
    release.set()
    worker.join(5)
    assert runs == ["s1:only"] and results[0].status == "completed"


def test_a_compensation_failing_forever_escalates_once_and_runs_nothing_more(
        tmp_path: Path) -> None:
    ledger = Ledger()
    alerts: list[SagaAlert] = []

    def refund(ctx: StepContext, result: Any) -> None:
        ledger.calls.append(ctx.idempotency_key)
        raise ConnectionError("refund service down")

    registry = _registry(ledger, stuck=[
        Step("charge", lambda ctx: ledger.apply(ctx.idempotency_key), refund),
        Step("ship", lambda ctx: (_ for _ in ()).throw(OSError("no courier"))),
        Step("notify", lambda ctx: ledger.apply(ctx.idempotency_key))])
    runner = _runner(registry, SagaLog(str(tmp_path / "s.db")), alert=alerts.append,
                     retry=RetryPolicy(max_attempts=3))
    assert runner.run("stuck", {}, saga_id="s1").status == "stuck"
    assert [a.step for a in alerts] == ["charge"] and alerts[0].attempts == 3
    calls = list(ledger.calls)
    with pytest.raises(SagaStuck):
        runner.run("stuck", {}, saga_id="s1")
    with pytest.raises(SagaStuck):
        runner.resume("s1")
    assert runner.resume_all() == [] and ledger.calls == calls and len(alerts) == 1
    assert "s1:notify" not in ledger.applied
    assert calls == ["s1:charge"] + ["s1:charge:compensate"] * 3


def test_a_retry_policy_must_retry_at_least_once() -> None:
    for bad in ({"max_attempts": 0}, {"base_delay_s": -1.0}, {"multiplier": 0.5},
                {"max_delay_s": float("nan")}):
        with pytest.raises(SagaError):
            RetryPolicy(**bad)
