"""The durable saga log: every saga, every step's state and result, and an event trail.

SQLite, a path or ``":memory:"``; the same file is shared by every process that opens it (WAL).
Every state change is one committed transaction, so after a crash the log says exactly which
steps were started, which finished (with their results) and which were compensated.

Saga status: ``running`` → ``completed``; or ``running`` → ``compensating`` → ``compensated``;
or ``compensating`` → ``stuck`` (terminal until an operator intervenes).
Step status: ``pending`` → ``started`` → ``done`` | ``failed``; a ``done`` step is later
``compensating`` → ``compensated`` | ``compensation_failed``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from bastion._canon import jsonable
from bastion._sqlite import connect, transaction
from bastion.runtime._errors import SagaError

UNFINISHED = ("running", "compensating")
FINAL = ("completed", "compensated", "stuck")
SAGA_STATUSES = frozenset({"running", "completed", "compensating", "compensated", "stuck"})
STEP_STATUSES = frozenset({"pending", "started", "done", "failed", "compensating",
                           "compensated", "compensation_failed"})

_SCHEMA = """
create table if not exists sagas (id text primary key, name text not null, payload text not null,
    status text not null, error text not null default '', owner text not null default '',
    lease_until real not null default 0, created real not null, updated real not null);
create table if not exists saga_steps (saga_id text not null, idx integer not null,
    name text not null, status text not null, result text, error text not null default '',
    attempts integer not null default 0, comp_attempts integer not null default 0,
    primary key (saga_id, idx));
create table if not exists saga_events (seq integer primary key autoincrement,
    saga_id text not null, at real not null, kind text not null, step text not null,
    detail text not null);
create index if not exists saga_status on sagas(status);
"""


@dataclass(frozen=True, slots=True)
class StepRecord:
    idx: int
    name: str
    status: str
    result: Any
    error: str
    attempts: int
    comp_attempts: int


@dataclass(frozen=True, slots=True)
class SagaRecord:
    id: str
    name: str
    payload: Any
    status: str
    error: str
    steps: tuple[StepRecord, ...]


@dataclass(frozen=True, slots=True)
class SagaEvent:
    seq: int
    saga_id: str
    at: float
    kind: str
    step: str
    detail: Any


class SagaLog:
    """SQLite saga log; thread-safe; one transaction per state change."""

    def __init__(self, path: str = ":memory:"):
        self.path = path
        try:
            # synchronous=full: a logged step survives power loss
            self._db = connect(path, _SCHEMA, synchronous="full")
        except (OSError, sqlite3.Error) as exc:
            raise SagaError(f"{path!r}: cannot open saga log: {exc}") from exc
        self._lock = threading.RLock()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock, lambda exc: SagaError(
            f"{self.path!r}: saga log failed: {exc}"))

    @staticmethod
    def _event(db: sqlite3.Connection, saga_id: str, now: float, kind: str, step: str = "",
               detail: Any = None) -> None:
        db.execute("insert into saga_events(saga_id, at, kind, step, detail) values(?,?,?,?,?)",
                   (saga_id, now, kind, step, json.dumps(detail, sort_keys=True)))

    def event(self, saga_id: str, kind: str, step: str = "", detail: Any = None, *,
              now: float) -> None:
        """Record an event about a saga outside a state change."""
        with self._tx() as db:
            self._event(db, saga_id, now, kind, step, detail)

    def create(self, saga_id: str, name: str, payload: Any, steps: list[str],
               now: float) -> bool:
        """Record a new saga and its pending steps; ``False`` if ``saga_id`` already exists."""
        with self._tx() as db:
            if db.execute("select 1 from sagas where id=?", (saga_id,)).fetchone():
                return False
            db.execute("insert into sagas(id, name, payload, status, created, updated) "
                       "values(?,?,?,?,?,?)",
                       (saga_id, name, json.dumps(payload, sort_keys=True), "running", now, now))
            db.executemany("insert into saga_steps(saga_id, idx, name, status) values(?,?,?,?)",
                           [(saga_id, i, s, "pending") for i, s in enumerate(steps)])
            self._event(db, saga_id, now, "saga_started", detail={"name": name})
        return True

    def claim(self, saga_id: str, owner: str, now: float, lease_s: float) -> bool:
        """Take or renew the lease on a saga; ``False`` while another owner's lease is live."""
        with self._tx() as db:
            cur = db.execute("update sagas set owner=?, lease_until=? where id=? and "
                             "(owner='' or owner=? or lease_until<?)",
                             (owner, now + lease_s, saga_id, owner, now))
            return cur.rowcount == 1

    def release(self, saga_id: str, owner: str) -> None:
        with self._tx() as db:
            db.execute("update sagas set owner='', lease_until=0 where id=? and owner=?",
                       (saga_id, owner))

    def get(self, saga_id: str) -> SagaRecord | None:
        with self._lock:
            row = self._db.execute("select id, name, payload, status, error from sagas "
                                   "where id=?", (saga_id,)).fetchone()
            if row is None:
                return None
            steps = self._db.execute("select idx, name, status, result, error, attempts, "
                                     "comp_attempts from saga_steps where saga_id=? order by "
                                     "idx", (saga_id,)).fetchall()
        try:
            if row[3] not in SAGA_STATUSES or any(s[2] not in STEP_STATUSES for s in steps):
                raise ValueError("unknown status")
            return SagaRecord(row[0], row[1], json.loads(row[2]), row[3], row[4], tuple(
                StepRecord(s[0], s[1], s[2], None if s[3] is None else json.loads(s[3]), s[4],
                           s[5], s[6]) for s in steps))
        except (TypeError, ValueError) as exc:  # never guess what a damaged row meant
            raise SagaError(f"{self.path!r}: saga {saga_id!r} has a corrupted log row: "
                            f"{exc}") from exc

    def unfinished(self) -> list[str]:
        """Every saga not in a final state (including one whose status is damaged, so that
        resuming it reports the damage rather than passing over it)."""
        with self._lock:
            rows = self._db.execute("select id from sagas where status not in (?,?,?) order by "
                                    "created, id", FINAL).fetchall()
        return [r[0] for r in rows]

    def step_started(self, saga_id: str, idx: int, owner: str, now: float,
                     lease_s: float) -> None:
        """Write-ahead: the step is about to run (attempt counted, lease renewed)."""
        with self._tx() as db:
            self._own(db, saga_id, owner, "running")
            db.execute("update saga_steps set status='started', attempts=attempts+1 where "
                       "saga_id=? and idx=?", (saga_id, idx))
            db.execute("update sagas set lease_until=?, updated=? where id=?",
                       (now + lease_s, now, saga_id))
            self._event(db, saga_id, now, "step_started", self._name(db, saga_id, idx))

    def step_done(self, saga_id: str, idx: int, result: Any, now: float, *, owner: str) -> None:
        with self._tx() as db:
            self._own(db, saga_id, owner, "running")
            db.execute("update saga_steps set status='done', result=?, error='' where "
                       "saga_id=? and idx=?", (json.dumps(jsonable(result), sort_keys=True),
                                               saga_id, idx))
            self._event(db, saga_id, now, "step_done", self._name(db, saga_id, idx))

    def step_failed(self, saga_id: str, idx: int, error: str, now: float, *, owner: str) -> None:
        """The step failed for good: mark it and switch the saga to compensating, atomically."""
        with self._tx() as db:
            self._own(db, saga_id, owner, "running")
            db.execute("update saga_steps set status='failed', error=? where saga_id=? and "
                       "idx=?", (error, saga_id, idx))
            db.execute("update sagas set status='compensating', error=?, updated=? where id=?",
                       (error, now, saga_id))
            self._event(db, saga_id, now, "step_failed", self._name(db, saga_id, idx),
                        {"error": error})

    def compensation_started(self, saga_id: str, idx: int, owner: str, now: float,
                             lease_s: float) -> None:
        with self._tx() as db:
            self._own(db, saga_id, owner, "compensating")
            db.execute("update saga_steps set status='compensating', "
                       "comp_attempts=comp_attempts+1 where saga_id=? and idx=?", (saga_id, idx))
            db.execute("update sagas set lease_until=?, updated=? where id=?",
                       (now + lease_s, now, saga_id))
            self._event(db, saga_id, now, "compensation_started", self._name(db, saga_id, idx))

    def compensation_error(self, saga_id: str, idx: int, error: str, now: float, *,
                           owner: str) -> None:
        with self._tx() as db:
            self._own(db, saga_id, owner, "compensating")
            db.execute("update saga_steps set error=? where saga_id=? and idx=?",
                       (error, saga_id, idx))
            self._event(db, saga_id, now, "compensation_error", self._name(db, saga_id, idx),
                        {"error": error})

    def compensated(self, saga_id: str, idx: int, now: float, *, owner: str) -> None:
        with self._tx() as db:
            self._own(db, saga_id, owner, "compensating")
            db.execute("update saga_steps set status='compensated' where saga_id=? and idx=?",
                       (saga_id, idx))
            self._event(db, saga_id, now, "step_compensated", self._name(db, saga_id, idx))

    def stuck(self, saga_id: str, idx: int, error: str, now: float, *, owner: str) -> None:
        """Escalate: the step's compensation kept failing; the saga executes nothing more."""
        with self._tx() as db:
            self._own(db, saga_id, owner, "compensating")
            db.execute("update saga_steps set status='compensation_failed', error=? where "
                       "saga_id=? and idx=?", (error, saga_id, idx))
            db.execute("update sagas set status='stuck', error=?, updated=? where id=?",
                       (error, now, saga_id))
            self._event(db, saga_id, now, "escalated", self._name(db, saga_id, idx),
                        {"error": error})

    def finish(self, saga_id: str, status: str, now: float, *, owner: str) -> None:
        """``running`` → ``completed`` or ``compensating`` → ``compensated``."""
        with self._tx() as db:
            self._own(db, saga_id, owner, {"completed": "running",
                                           "compensated": "compensating"}.get(status, ""))
            db.execute("update sagas set status=?, updated=? where id=?", (status, now, saga_id))
            self._event(db, saga_id, now, f"saga_{status}")

    def events(self, saga_id: str) -> list[SagaEvent]:
        with self._lock:
            rows = self._db.execute("select seq, saga_id, at, kind, step, detail from "
                                    "saga_events where saga_id=? order by seq",
                                    (saga_id,)).fetchall()
        return [SagaEvent(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    @staticmethod
    def _name(db: sqlite3.Connection, saga_id: str, idx: int) -> str:
        row = db.execute("select name from saga_steps where saga_id=? and idx=?",
                         (saga_id, idx)).fetchone()
        return str(row[0]) if row else ""

    @staticmethod
    def _own(db: sqlite3.Connection, saga_id: str, owner: str, status: str | None = None
             ) -> None:
        """Refuse a write by a runner that no longer holds the lease (another runner took the
        saga over), or one that finds the saga no longer in ``status``."""
        row = db.execute("select owner, status from sagas where id=?", (saga_id,)).fetchone()
        if row is None or row[0] != owner:
            raise SagaError(f"saga {saga_id!r}: lease lost to {row[0] if row else None!r}; "
                            "refusing to change it")
        if status is not None and row[1] != status:
            raise SagaError(f"saga {saga_id!r} is {row[1]!r}, not {status!r}; refusing to "
                            "change it")

    def close(self) -> None:
        with self._lock:
            self._db.close()
