"""``AuditLog``: the writer of the tamper-evident audit chain.

Each event body the kernel appends becomes one entry, sealed by ``Chain`` (see ``_chain``) in
the order events were enqueued, and each batch is stored in one transaction together with a
signed checkpoint when one is due.

Batched mode (default): ``append`` only enqueues; one daemon thread seals and stores. A full
queue blocks the caller (back-pressure), so memory stays bounded (by ``queue_max`` plus one
in-flight event per appending thread) and nothing is dropped. Durable mode seals and stores on
the caller's thread, committed (``synchronous=FULL``) before ``append`` returns.

Fail closed: once a write fails the log is unhealthy, events still queued are counted in
``stats.failed`` and every later ``append``/``flush`` raises ``AuditError``. One writer per file:
a writer whose head another has moved past refuses to write (and so fails) and signs no stale
checkpoint.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion._errors import AuditError, ConfigError
from bastion.audit import _store
from bastion.audit._chain import Chain, CheckpointRow
from bastion.audit._keys import StrPath
from bastion.audit._store import AuditStats, Resumed

__all__ = ["AuditLog", "AuditStats"]

_IDLE_WAIT = 0.1
_GATHER_WAIT = 0.005  # a lone event waits at most this long for others to batch with
_INSERT_ENTRY = "INSERT INTO entries (seq, body, mac, leaf) VALUES (?, ?, ?, ?)"
_INSERT_CHECKPOINT = "INSERT INTO checkpoints (tree_size, body, signature) VALUES (?, ?, ?)"


class _Marker:
    """Queued behind every event appended before it; set once the worker has reached it."""
    __slots__ = ("done", "stop")

    def __init__(self, *, stop: bool = False) -> None:
        self.done = threading.Event()
        self.stop = stop


class AuditLog:
    """Append-only, HMAC-chained, Merkle-checkpointed event log. Thread-safe; one per file."""

    def __init__(
        self,
        *,
        conn: sqlite3.Connection,
        path: Path | None,
        key: bytes,
        signing_key: Ed25519PrivateKey,
        resumed: Resumed,
        durable: bool,
        batch_max: int,
        queue_max: int,
        checkpoint_every: int,
        clock: Callable[[], int],
    ) -> None:
        self._conn = conn
        self._path = path
        self._key = key
        self._public_key = signing_key.public_key()
        self._durable = durable
        self._batch_max = batch_max
        self._queue_max = queue_max
        # The chain head and the connection: touched only under _db_lock.
        self._db_lock = threading.Lock()
        self._chain = Chain(key, signing_key, resumed, checkpoint_every=checkpoint_every,
                            clock=clock)
        self._queue: deque[Any] = deque()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._idle = self._gathering = self._dead = self._closed = False
        self._wake_at = max(1, batch_max // 4)
        self._blocked = self._markers = 0
        self._error: BaseException | None = None
        self._taken = self._written = self._failed = self._malformed = 0  # counters
        self._checkpoints = resumed.checkpoints
        self._worker: threading.Thread | None = None
        if not durable:
            self._worker = threading.Thread(target=self._run, name="bastion-audit", daemon=True)
            self._worker.start()
        self._at_exit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    @classmethod
    def open(
        cls,
        target: _store.AuditTarget = None,
        *,
        key: bytes | None = None,
        key_path: StrPath | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        signing_key_path: StrPath | None = None,
        durable: bool = False,
        batch_max: int = 512,
        queue_max: int = 65536,
        checkpoint_every: int = 1000,
        clock: Callable[[], int] = time.time_ns,
    ) -> AuditLog:
        """Open (creating if needed) the log at ``target`` and continue its chain.

        Keys: an explicit ``key``/``signing_key`` wins, then ``key_path``/``signing_key_path``,
        then ``<db>.key`` and ``<db>.sign.pem`` beside a file log (fresh keys for in-memory).
        Opening an existing log needs its MAC key to exist already; a new signing key is
        registered in ``signers``. Raises ``ConfigError`` for bad options or key files and
        ``AuditError`` when the stored chain cannot be continued (see ``resume_log``).
        """
        for name, value in (("batch_max", batch_max), ("queue_max", queue_max),
                            ("checkpoint_every", checkpoint_every)):
            if type(value) is not int or value < 1:
                raise ConfigError(f"audit option {name!r} must be a positive integer")
        path = _store.resolve_target(target)
        conn, mac_key, signing_key, resumed = _store.open_chain(
            path, durable, key=key, key_path=key_path, signing_key=signing_key,
            signing_key_path=signing_key_path)
        return cls(conn=conn, path=path, key=mac_key, signing_key=signing_key, resumed=resumed,
                   durable=durable, batch_max=batch_max, queue_max=queue_max,
                   checkpoint_every=checkpoint_every, clock=clock)

    # -- the caller's side -------------------------------------------------------------------

    def append(self, body: Mapping[str, Any]) -> None:
        """Record one event body: a dict, or a ``Mapping`` the writer materialises later. The log
        takes ownership: do not mutate ``body`` afterwards.

        Batched mode returns once the event is queued (blocking while the queue is full);
        durable mode once it is committed. Raises ``AuditError`` if the log is closed or a
        write has failed; an event whose ``append`` returned is written or counted as failed.
        """
        if self._dead:
            self._raise_dead()
        if self._durable:
            self._append_durable(body)
            return
        queue = self._queue
        if len(queue) >= self._queue_max:
            self._wait_for_room()
        queue.append(body)
        if self._idle or (self._gathering and len(queue) >= self._wake_at):
            with self._lock:  # woken once per batch, not per event: fewer GIL hand-overs
                self._work.notify()
        if self._dead:  # closed or failed while we appended: the event may not be written
            self._raise_dead()

    def flush(self) -> None:
        """Block until every event appended before this call is committed, then checkpoint."""
        if self._durable:
            with self._db_lock:
                if self._error is None and not self._closed:
                    self._guarded(self._checkpoint, 0)
        elif not self._closed:
            marker = _Marker()
            self._enqueue_marker(marker)
            self._await(marker)
        if self._error is not None:
            self._raise_dead()

    def close(self) -> None:
        """Flush, stop the worker and close the database. Idempotent. Raises ``AuditError`` (once
        everything is released) if events were lost."""
        with self._lock:
            if self._closed:
                return
            self._closed = self._dead = True
            self._room.notify_all()
        atexit.unregister(self._at_exit)
        try:
            if self._worker is not None:
                marker = _Marker(stop=True)
                self._enqueue_marker(marker)
                self._await(marker)
                self._worker.join()
            else:
                with self._db_lock:
                    if self._error is None:
                        self._guarded(self._checkpoint, 0)
        finally:
            with self._db_lock:
                self._conn.close()
        if self._error is not None:
            self._raise_dead()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def stats(self) -> AuditStats:
        depth = max(0, len(self._queue) - self._markers)
        return AuditStats(
            appended=self._taken + depth, written=self._written, failed=self._failed,
            queue_depth=depth, checkpoints=self._checkpoints, malformed=self._malformed,
        )

    @property
    def durable(self) -> bool:
        """True when ``append`` commits before it returns (it then does I/O on the caller)."""
        return self._durable

    @property
    def healthy(self) -> bool:
        """False once a write has failed; the log then refuses every append."""
        return self._error is None

    @property
    def path(self) -> Path | None:
        """The database file, or ``None`` for an in-memory log."""
        return self._path

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The key checkpoints are signed with; pin it when verifying."""
        return self._public_key

    def _reader(self) -> tuple[_store.Reader, bytes]:
        """A reader over this log's own connection, and its MAC key (for ``_verify``)."""
        if self._closed:
            raise AuditError("audit log is closed; verify its file instead")
        return _store.Reader(self._conn, self._db_lock, owned=False), self._key

    # -- internals ---------------------------------------------------------------------------

    def _raise_dead(self) -> None:
        if self._error is not None:
            raise AuditError(f"audit log is unhealthy: {self._error}") from self._error
        raise AuditError("audit log is closed")

    def _wait_for_room(self) -> None:
        with self._lock:
            self._blocked += 1
            try:
                while len(self._queue) >= self._queue_max and not self._dead:
                    self._work.notify()
                    self._room.wait(_IDLE_WAIT)
            finally:
                self._blocked -= 1
        if self._dead:
            self._raise_dead()

    def _enqueue_marker(self, marker: _Marker) -> None:
        with self._lock:
            self._markers += 1
            self._queue.append(marker)
            self._work.notify()

    def _await(self, marker: _Marker) -> None:
        worker = self._worker
        while not marker.done.wait(_IDLE_WAIT):
            if worker is None or not worker.is_alive():
                if marker.done.is_set() or (self._closed and self._error is None):
                    return  # queued behind close's stop marker: close wrote what came before
                raise AuditError("audit writer thread has stopped")

    def _append_durable(self, body: Mapping[str, Any]) -> None:
        with self._db_lock:
            if self._dead:
                self._raise_dead()
            self._taken += 1
            if not self._guarded(self._write, [body]):
                self._raise_dead()

    def _run(self) -> None:
        try:
            self._drain()
        except BaseException as exc:  # a bug, not a write failure: still fail closed, loudly
            with self._lock:
                self._error = self._error or exc
                self._dead = True
                self._room.notify_all()
            raise

    def _drain(self) -> None:
        queue, batch_max = self._queue, self._batch_max
        while True:
            if not queue:
                with self._lock:
                    self._idle = True
                    while not queue:
                        self._work.wait(_IDLE_WAIT)
                    self._idle = False
            if len(queue) < self._wake_at and not self._markers:
                with self._lock:  # let a batch gather (a marker or a full batch wakes us)
                    self._gathering = True
                    self._work.wait(_GATHER_WAIT)
                    self._gathering = False
            batch: list[Any] = []
            marker: _Marker | None = None
            while queue and len(batch) < batch_max:
                item = queue.popleft()
                if type(item) is _Marker:
                    marker = item
                    break
                batch.append(item)
            self._taken += len(batch)
            if self._blocked or marker is not None:
                with self._lock:
                    if marker is not None:
                        self._markers -= 1
                    self._room.notify_all()
            if batch:
                with self._db_lock:
                    self._guarded(self._write, batch)
            if marker is not None:
                if self._error is None:
                    with self._db_lock:
                        self._guarded(self._checkpoint, 0)
                marker.done.set()
                if marker.stop:
                    return

    def _guarded(self, step: Callable[[Any], None], arg: Any) -> bool:
        """Run a write step (``_db_lock`` held); on any failure mark the log dead. Never raises."""
        lost = len(arg) if isinstance(arg, list) else 0
        if self._error is not None:
            self._failed += lost
            return False
        try:
            step(arg)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._conn.rollback()
            with self._lock:
                self._error = exc
                self._dead = True
                self._failed += lost
                self._room.notify_all()
            return False
        return True

    def _write(self, bodies: list[Any]) -> None:
        sealed = self._chain.seal(bodies)
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        if self._moved(conn):  # one writer per file: refuse rather than fork the chain
            conn.execute("ROLLBACK")
            raise AuditError("another writer appended to this audit log since it was opened")
        conn.executemany(_INSERT_ENTRY, sealed.rows)
        if sealed.checkpoint is not None:
            conn.execute(_INSERT_CHECKPOINT, sealed.checkpoint)
        conn.execute("COMMIT")
        self._chain.advance(sealed)
        self._written += len(sealed.rows)
        self._malformed += sealed.malformed
        self._checkpoints += sealed.checkpoint is not None

    def _checkpoint(self, _: Any) -> None:
        row: CheckpointRow | None = self._chain.checkpoint()
        if row is None:
            return
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        if self._moved(conn):  # a stale head: its checkpoint would read as the log shrinking
            conn.execute("ROLLBACK")
            return
        conn.execute(_INSERT_CHECKPOINT, row)
        conn.execute("COMMIT")
        self._chain.checkpoint_stored(row)
        self._checkpoints += 1

    def _moved(self, conn: Any) -> bool:
        """Another writer has appended entries or checkpoints past this writer's head."""
        top = conn.execute("SELECT max(seq) FROM entries").fetchone()[0]
        signed = conn.execute("SELECT max(tree_size) FROM checkpoints").fetchone()[0]
        head = self._chain.next_seq
        return (top if top is not None else -1) != head - 1 or (signed or 0) > head


def _close_at_exit(ref: weakref.ref[AuditLog]) -> None:
    log = ref()
    if log is not None:
        with contextlib.suppress(AuditError):
            log.close()
