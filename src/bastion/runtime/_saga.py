"""Sagas: multi-step workflows whose completed steps are undone in reverse order on failure.

A ``SagaDefinition`` is a named, ordered list of ``Step`` s (an action and its compensation),
registered under stable names in a ``SagaRegistry`` so that any process can resume a saga that
another process started. ``SagaRunner`` drives sagas against a durable ``SagaLog``.

Contracts a step must honour:

* An action receives a ``StepContext`` and returns a JSON-serialisable result. After a crash a
  step that was *started* but not recorded *done* is run again with the **same**
  ``idempotency_key``: the action must use that key so that its effect happens at most once.
* An action that raises is taken to have had no effect; it is not compensated.
* A compensation receives the context and the step's recorded result; it too may be re-run after
  a crash or a failure, with the same key, and must be idempotent.
* A step whose result is recorded is never run again.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion._canon import jsonable
from bastion.runtime._errors import SagaError, SagaStuck
from bastion.runtime._saga_log import SagaLog, SagaRecord

Action = Callable[["StepContext"], Any]
Compensation = Callable[["StepContext", Any], None]


@dataclass(frozen=True, slots=True)
class Step:
    """One step: ``action`` and its ``compensation`` (``None``: nothing to undo)."""

    name: str
    action: Action
    compensation: Compensation | None = None
    max_attempts: int = 1  # attempts of the action before the saga compensates


@dataclass(frozen=True, slots=True)
class SagaDefinition:
    name: str
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps]
        if not names:
            raise SagaError(f"saga {self.name!r}: no steps")
        if len(set(names)) != len(names):
            raise SagaError(f"saga {self.name!r}: step names must be unique")
        if any(type(s.max_attempts) is not int or s.max_attempts < 1 for s in self.steps):
            raise SagaError(f"saga {self.name!r}: 'max_attempts' must be at least 1")


class SagaRegistry:
    """Saga definitions by stable name; every process that resumes sagas registers the same."""

    def __init__(self) -> None:
        self._defs: dict[str, SagaDefinition] = {}

    def register(self, name: str, steps: list[Step]) -> SagaDefinition:
        if name in self._defs:
            raise SagaError(f"saga {name!r} is already registered")
        names = [s.name for s in steps]
        if any(not n or ":" in n for n in names) or len(set(names)) != len(names):
            # ':' separates the parts of an idempotency key ("<saga>:<step>:compensate")
            raise SagaError(f"saga {name!r}: step names must be unique, non-empty, without ':'")
        definition = SagaDefinition(name, tuple(steps))
        self._defs[name] = definition
        return definition

    def get(self, name: str) -> SagaDefinition:
        try:
            return self._defs[name]
        except KeyError:
            raise SagaError(f"saga {name!r} is not registered in this process") from None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: attempt ``n`` (from 1) waits ``base * multiplier**(n-1)``, capped."""

    max_attempts: int = 5
    base_delay_s: float = 0.1
    multiplier: float = 2.0
    max_delay_s: float = 10.0

    def __post_init__(self) -> None:
        numbers = (self.base_delay_s, self.multiplier, self.max_delay_s)
        if type(self.max_attempts) is not int or self.max_attempts < 1 \
                or not all(isinstance(n, int | float) and not isinstance(n, bool)
                           for n in numbers) \
                or not self.base_delay_s >= 0 or not self.multiplier >= 1 \
                or not self.max_delay_s >= 0:
            raise SagaError("retry policy: 'max_attempts' must be an integer of at least 1, "
                            "delays non-negative numbers and 'multiplier' at least 1")

    def delay(self, attempt: int) -> float:
        try:  # a long policy reaches the cap long before the power overflows a float
            grown = float(self.base_delay_s) * float(self.multiplier) ** (attempt - 1)
        except OverflowError:
            return float(self.max_delay_s)
        return float(min(self.max_delay_s, grown))


@dataclass(frozen=True, slots=True)
class StepContext:
    saga_id: str
    step: str
    payload: Any
    results: Mapping[str, Any]  # results of the steps before this one, by step name
    idempotency_key: str
    attempt: int


@dataclass(frozen=True, slots=True)
class SagaAlert:
    """Sent to the alert callback when a compensation is given up and the saga is stuck."""

    saga_id: str
    saga: str
    step: str
    error: str
    attempts: int


@dataclass(frozen=True, slots=True)
class SagaOutcome:
    saga_id: str
    status: str  # completed | compensated | stuck
    results: Mapping[str, Any] = field(default_factory=dict)
    failed_step: str | None = None
    error: str = ""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Busy(SagaError):
    """The saga is being driven by another runner (or another thread of this one)."""


class SagaRunner:
    """Runs, resumes and compensates sagas recorded in one ``SagaLog``.

    ``clock``, ``sleep`` and ``id_factory`` are injected; ``lease_s`` bounds how long a crashed
    runner keeps others from resuming its sagas, and must exceed the longest step.
    """

    def __init__(self, registry: SagaRegistry, log: SagaLog, *,
                 retry: RetryPolicy | None = None,
                 alert: Callable[[SagaAlert], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time,
                 id_factory: Callable[[], str] = lambda: uuid.uuid4().hex,
                 lease_s: float = 30.0, owner: str | None = None, audit: Any = None):
        self.registry = registry
        self._audit = audit  # an AuditLog: escalations are recorded there too
        self._driving: set[str] = set()  # sagas this runner is driving now (any thread)
        self._driving_lock = threading.Lock()
        self.log = log
        self.retry = retry or RetryPolicy()
        self._alert = alert
        self._sleep = sleep
        self._clock = clock
        self._ids = id_factory
        self.lease_s = lease_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def run(self, name: str, payload: Any = None, *, saga_id: str | None = None) -> SagaOutcome:
        """Start saga ``name``; an existing ``saga_id`` is resumed (or its outcome returned)."""
        definition = self.registry.get(name)
        sid = saga_id or self._ids()
        if not isinstance(sid, str) or not sid or ":" in sid:
            # ':' separates the parts of an idempotency key: saga "x:pay" step "compensate"
            # would share "x:pay:compensate" with the compensation of step "pay" of saga "x"
            raise SagaError(f"saga id {sid!r} must be a non-empty string without ':'")
        try:
            text = json.dumps(payload, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise SagaError(f"saga {name!r}: payload is not JSON: {exc}") from exc
        if not self.log.create(sid, definition.name, payload,
                               [s.name for s in definition.steps], self._clock()):
            rec = self._record(sid)
            if rec.name != definition.name or json.dumps(rec.payload, sort_keys=True) != text:
                raise SagaError(f"saga id {sid!r} is already used by saga {rec.name!r} with "
                                "another payload or name; not resuming it as this one")
        return self.resume(sid)

    def resume_all(self) -> list[SagaOutcome]:
        """Resume every unfinished saga whose lease is free; stuck sagas are left alone."""
        outcomes = []
        for sid in self.log.unfinished():
            try:
                outcomes.append(self.resume(sid))
            except (_Busy, SagaStuck):
                continue  # leased by a live runner, or stuck: not this call's to drive
            except Exception as exc:  # one broken saga must not keep the others unfinished
                self.log.event(sid, "resume_failed", "",
                               {"error": f"{type(exc).__name__}: {exc}"}, now=self._clock())
        return outcomes

    def resume(self, saga_id: str) -> SagaOutcome:
        """Drive one saga to ``completed``, ``compensated`` or ``stuck``.

        Steps:
        1. Take the saga's lease; refuse (``SagaError``) while another runner holds it. Every
           later write checks the lease is still ours (``SagaError`` once another runner took
           it over) and that the saga is still in the state the write expects.
        2. A ``stuck`` saga raises ``SagaStuck``: it executes nothing more. A saga whose logged
           step names differ from the registered definition's raises ``SagaError``.
        3. While ``running``: skip every ``done`` step; for the next one, write ``started``,
           run the action (same idempotency key on every attempt and after a crash), write
           ``done`` with its result. A final failure writes ``failed`` and flips the saga to
           ``compensating`` in one transaction.
        4. While ``compensating``: for every ``done`` or ``compensating`` step, last first,
           write ``compensating``, run the compensation with retries and backoff, write
           ``compensated``. If every retry fails, mark the saga ``stuck``, record an
           ``escalated`` event and call the alert callback.
        5. Release the lease.
        """
        now = self._clock()
        with self._driving_lock:  # the lease admits its owner again: one thread per saga here
            if saga_id in self._driving:
                raise _Busy(f"saga {saga_id!r} is already being driven by this runner")
            self._driving.add(saga_id)
        try:
            return self._resume_claimed(saga_id, now)
        finally:
            with self._driving_lock:
                self._driving.discard(saga_id)

    def _resume_claimed(self, saga_id: str, now: float) -> SagaOutcome:
        if not self.log.claim(saga_id, self.owner, now, self.lease_s):
            if self.log.get(saga_id) is None:
                raise SagaError(f"saga {saga_id!r} not found")
            raise _Busy(f"saga {saga_id!r} is leased by another runner")
        try:
            rec = self._record(saga_id)
            if rec.status == "stuck":
                failed = next((s.name for s in rec.steps if s.status == "compensation_failed"),
                              "")
                raise SagaStuck(saga_id, failed)
            definition = self.registry.get(rec.name)
            if [s.name for s in rec.steps] != [s.name for s in definition.steps]:
                # the log's steps are matched to the definition's by position: never run or
                # compensate a step under another step's record
                raise SagaError(f"saga {saga_id!r}: its logged steps do not match the steps "
                                f"of saga {rec.name!r} registered here")
            if rec.status == "running":
                self._forward(definition, rec)
                rec = self._record(saga_id)
            if rec.status == "compensating":
                self._compensate(definition, rec)
                rec = self._record(saga_id)
            return self._outcome(rec)
        finally:
            self.log.release(saga_id, self.owner)

    # -- internals ---------------------------------------------------------------------------

    def _record(self, saga_id: str) -> SagaRecord:
        rec = self.log.get(saga_id)
        if rec is None:
            raise SagaError(f"saga {saga_id!r} not found")
        return rec

    def _forward(self, definition: SagaDefinition, rec: SagaRecord) -> None:
        results = {s.name: s.result for s in rec.steps if s.status == "done"}
        for srec, step in zip(rec.steps, definition.steps, strict=True):
            if srec.status == "done":
                continue
            key = f"{rec.id}:{step.name}"
            attempt = 0
            while True:
                attempt += 1
                self.log.step_started(rec.id, srec.idx, self.owner, self._clock(),
                                      self.lease_s)
                ctx = StepContext(rec.id, step.name, rec.payload, dict(results), key,
                                  srec.attempts + attempt)
                try:
                    result = step.action(ctx)
                except Exception as exc:
                    if attempt < step.max_attempts:
                        self._sleep(self.retry.delay(attempt))
                        continue
                    self.log.step_failed(rec.id, srec.idx, _describe(exc), self._clock(),
                                         owner=self.owner)
                    return
                break
            result = jsonable(result)  # it ran: record it as JSON even if it is not JSON
            self.log.step_done(rec.id, srec.idx, result, self._clock(), owner=self.owner)
            results[step.name] = result
        self.log.finish(rec.id, "completed", self._clock(), owner=self.owner)

    def _compensate(self, definition: SagaDefinition, rec: SagaRecord) -> None:
        results = {s.name: s.result for s in rec.steps if s.status in ("done", "compensating")}
        for srec in reversed(rec.steps):
            if srec.status not in ("done", "compensating"):
                continue
            step = definition.steps[srec.idx]
            key = f"{rec.id}:{step.name}:compensate"
            error = ""
            for attempt in range(1, self.retry.max_attempts + 1):
                self.log.compensation_started(rec.id, srec.idx, self.owner, self._clock(),
                                              self.lease_s)
                ctx = StepContext(rec.id, step.name, rec.payload, results, key,
                                  srec.comp_attempts + attempt)
                try:
                    if step.compensation is not None:
                        step.compensation(ctx, srec.result)
                except Exception as exc:
                    error = _describe(exc)
                    self.log.compensation_error(rec.id, srec.idx, error, self._clock(),
                                                owner=self.owner)
                    if attempt < self.retry.max_attempts:
                        self._sleep(self.retry.delay(attempt))
                    continue
                self.log.compensated(rec.id, srec.idx, self._clock(), owner=self.owner)
                break
            else:
                self.log.stuck(rec.id, srec.idx, error, self._clock(), owner=self.owner)
                try:  # the operator is alerted even when the audit write fails
                    if self._audit is not None:
                        ts = time.time_ns()
                        self._audit.append({"kind": "saga.escalated",
                                            "id": f"saga:{rec.id}:{ts}", "ts": ts,
                                            "saga": rec.id, "name": rec.name,
                                            "step": step.name, "error": error[:2000]})
                finally:
                    if self._alert is not None:
                        self._alert(SagaAlert(rec.id, rec.name, step.name, error,
                                              self.retry.max_attempts))
                return
        self.log.finish(rec.id, "compensated", self._clock(), owner=self.owner)

    @staticmethod
    def _outcome(rec: SagaRecord) -> SagaOutcome:
        failed = next((s.name for s in rec.steps if s.status in ("failed",
                                                                  "compensation_failed")), None)
        return SagaOutcome(rec.id, rec.status,
                           {s.name: s.result for s in rec.steps if s.status == "done"},
                           failed, rec.error)
