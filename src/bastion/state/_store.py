"""Durable state the kernel reads and writes: counters, flags and approvals.

A store is chosen by URL: ``None``/``memory://`` (in-process), a path or ``sqlite:///path``
(shared by every process that opens the same file), ``redis://…`` (shared by a fleet; see
``bastion.state._redis``). Each operation that decides something
(``take``, ``consume_approval``) is atomic, so two processes can never both take the last unit of a
limit or both use one approval.

Flags (the kill switch) are read on every decision, so they are cached in-process and the cache is
invalidated through a generation counter in a small file beside the database: any
process that changes a flag bumps it, every other process sees the bump on its next read at the
cost of one 8-byte read (pread).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from bastion._canon import LazyModule
from bastion._errors import StateError
from bastion._sqlite import connect, sqlite_path, transaction

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable
else:  # imported on first use: not needed by `import bastion` itself
    sqlite3 = LazyModule("sqlite3", globals())


@dataclass(frozen=True, slots=True)
class Approval:
    """A pending or decided approval, bound to the digest of one exact action."""

    id: str
    digest: str
    tool: str
    agent: str
    session: str
    created: float
    expires: float
    status: str = "pending"  # pending | granted | refused | used
    decided_by: str = ""
    note: str = ""


class StateStore(Protocol):
    """What the kernel needs from durable state. Implementations must be thread-safe."""

    def take(self, key: str, limit: int, window_s: int, now: float) -> tuple[bool, int]:
        """Count one unit against ``key`` in the current window unless ``limit`` is reached."""

    def count(self, key: str, window_s: int, now: float) -> int: ...

    def clear_prefix(self, prefix: str) -> int:
        """Delete every counter whose key starts with ``prefix``; how many."""

    def add(self, key: str, amount: int, window_s: int, now: float) -> int:
        """Add ``amount`` to ``key``'s counter in the current window; the new total."""

    def flags(self) -> dict[str, str]:
        """All set flags (cached; cheap to call on every decision)."""

    def set_flag(self, key: str, value: str) -> None: ...

    def clear_flag(self, key: str) -> bool: ...

    def put_approval(self, approval: Approval) -> None: ...

    def get_approval(self, approval_id: str) -> Approval | None: ...

    def list_approvals(self, status: str | None = None) -> list[Approval]: ...

    def decide_approval(self, approval_id: str, grant: bool, by: str, note: str,
                        now: float) -> Approval: ...

    def consume_approval(self, approval_id: str, digest: str, now: float) -> Approval | None:
        """Atomically mark a granted, unexpired approval for ``digest`` used; else ``None``."""

    def close(self) -> None: ...


def open_store(target: str | os.PathLike[str] | None) -> StateStore:
    """Open the store named by ``target`` (see module docstring; ``redis://…`` and
    ``rediss://…``: ``bastion.state._redis``)."""
    if isinstance(target, str) and target.split("://", 1)[0] in ("redis", "rediss", "unix"):
        from bastion.state._redis import RedisStore

        return RedisStore(target)
    return SQLiteStore(sqlite_path(target, "state"))


_SCHEMA = """
create table if not exists counters (key text primary key, window integer not null,
                                     n integer not null);
create table if not exists flags (key text primary key, value text not null);
create table if not exists approvals (id text primary key, digest text not null, tool text,
    agent text, session text, created real, expires real, status text not null,
    decided_by text, note text);
create table if not exists facts (key text not null, seq integer not null, body blob not null,
                                  primary key (key, seq));
"""


class _Generation:
    """An 8-byte counter shared between processes through a small file beside the database.

    Read with one ``pread`` per decision. Not memory-mapped: anyone who can write the file
    could truncate it and a mapped read would then kill the process (SIGBUS); a short or
    unreadable file instead reads as "changed", so the flags are reloaded from the database.
    At most every ``RECHECK_S`` a read also checks that the path still names the open file: one
    deleted or replaced (a clean-up, a restore) is opened again and the flags reloaded, so a
    switch engaged through the new file reaches this process within that time.
    """

    RECHECK_S = 0.05

    def __init__(self, path: str | None):
        self._local = 0
        self._fd: int | None = None
        self._path = path
        self._checked = 0.0
        self._stale = False
        if path is None:
            return
        self._fd = self._open(path)
        self._checked = time.monotonic()

    @staticmethod
    def _open(path: str) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(fd).st_size < 8:
            os.pwrite(fd, b"\0" * 8, 0)
        return fd

    def _replaced(self) -> bool:
        """Whether the path names another file than the one open (then it is opened)."""
        assert self._fd is not None and self._path is not None
        try:
            same = os.stat(self._path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            same = False
        if same:
            return False
        try:
            fd = self._open(self._path)
        except OSError:
            return True  # cannot open it now: reload every time until it can
        os.close(self._fd)
        self._fd = fd
        return True

    def read(self) -> int:
        if self._fd is None:
            return self._local
        if self._stale:
            self._stale = False
            self._local -= 1
            return self._local
        now = time.monotonic()
        if now - self._checked > self.RECHECK_S:
            self._checked = now
            if self._replaced():
                self._local -= 1  # a value no one has cached: forces a reload
                return self._local
        try:
            data = os.pread(self._fd, 8, 0)
        except OSError:
            data = b""
        if len(data) < 8:
            self._local -= 1  # a value no one has cached: forces a reload
            return self._local
        value: int = struct.unpack("<Q", data)[0]
        return value

    def bump(self) -> None:
        if self._fd is None:
            self._local += 1
            return
        if self._replaced():  # the change must go to the file the path names now, and
            self._stale = True  # this process reloads too (the new file may hold its value)
        try:
            data = os.pread(self._fd, 8, 0)
        except OSError:
            data = b""
        current = struct.unpack("<Q", data)[0] if len(data) == 8 else 0
        os.pwrite(self._fd, struct.pack("<Q", (current + 1) % (1 << 64)), 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SQLiteStore:
    """SQLite-backed ``StateStore`` (``:memory:`` for one process, a file for many)."""

    def __init__(self, path: str):
        self.path = path
        memory = path == ":memory:"
        try:
            self._db = connect(path, _SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"{path!r}: cannot open state store: {exc}") from exc
        self._lock = threading.RLock()
        # beside the real file: a process that opened it through a symlink shares the counter
        self._gen = _Generation(None if memory else os.path.realpath(path) + ".gen")
        self._flags_gen = -1
        self._flags: dict[str, str] = {}

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock, lambda exc: StateError(
            f"{self.path!r}: state store failed: {exc}"))

    def take(self, key: str, limit: int, window_s: int, now: float) -> tuple[bool, int]:
        window = int(now // window_s)
        with self._tx() as db:
            row = db.execute("select window, n from counters where key=?", (key,)).fetchone()
            if row and row[0] == window + 1:  # a worker whose clock runs ahead: its window
                window = row[0]
            n = row[1] if row and row[0] == window else 0
            if n >= limit:
                return False, n
            db.execute("insert into counters(key, window, n) values(?,?,?) on conflict(key) do "
                       "update set window=excluded.window, n=excluded.n", (key, window, n + 1))
            return True, n + 1

    def add(self, key: str, amount: int, window_s: int, now: float) -> int:
        window = int(now // window_s)
        with self._tx() as db:
            row = db.execute("select window, n from counters where key=?", (key,)).fetchone()
            if row and row[0] == window + 1:
                window = row[0]
            n = (row[1] if row and row[0] == window else 0) + amount
            db.execute("insert into counters(key, window, n) values(?,?,?) on conflict(key) do "
                       "update set window=excluded.window, n=excluded.n", (key, window, n))
            return int(n)

    def clear_prefix(self, prefix: str) -> int:
        with self._tx() as db:  # substr, not LIKE: LIKE ignores ASCII case
            return int(db.execute("delete from counters where substr(key, 1, ?) = ?",
                                  (len(prefix), prefix)).rowcount)

    def delete(self, keys: Iterable[str]) -> int:
        """Delete the counters named exactly by ``keys``; how many there were."""
        with self._tx() as db:
            return sum(int(db.execute("delete from counters where key=?", (k,)).rowcount)
                       for k in keys)

    def add_fact(self, key: str, window_s: int, now: float, facts: str, body: bytes,
                 ceiling: int | None = None) -> int:
        """``add(key, 1, …)`` and keep ``body`` under ``(facts, the new count)``, atomically:
        the count numbers the fact. For a log that other processes replay (the flow facts).
        Nothing when the count is already at ``ceiling`` (then: the count)."""
        window = int(now // window_s)
        with self._tx() as db:
            row = db.execute("select window, n from counters where key=?", (key,)).fetchone()
            if row and row[0] == window + 1:
                window = row[0]
            if ceiling is not None and row and row[0] == window and row[1] >= ceiling:
                return int(row[1])
            n = (row[1] if row and row[0] == window else 0) + 1
            db.execute("insert into counters(key, window, n) values(?,?,?) on conflict(key) do "
                       "update set window=excluded.window, n=excluded.n", (key, window, n))
            db.execute("insert or replace into facts(key, seq, body) values(?,?,?)",
                       (facts, n, body))
            return int(n)

    def facts(self, facts: str, upto: int, since: int = 0) -> dict[int, bytes]:
        """The bodies kept under ``facts`` numbered ``since + 1`` to ``upto``."""
        with self._lock:
            rows = self._db.execute("select seq, body from facts where key=? and seq > ? and "
                                    "seq <= ?", (facts, since, upto)).fetchall()
        return {int(seq): bytes(body) for seq, body in rows}

    def delete_facts(self, facts: str) -> int:
        with self._tx() as db:
            return int(db.execute("delete from facts where key=?", (facts,)).rowcount)

    def count(self, key: str, window_s: int, now: float) -> int:
        window = int(now // window_s)
        with self._lock:
            row = self._db.execute("select window, n from counters where key=?",
                                   (key,)).fetchone()
        return int(row[1]) if row and row[0] - window in (0, 1) else 0

    def counts(self, prefix: str, window_s: int, now: float) -> dict[str, int]:
        """Every counter whose key starts with ``prefix`` (exactly: no LIKE wildcards), in the
        current window, in one query."""
        window = int(now // window_s)
        with self._lock:
            rows = self._db.execute(
                "select key, n from counters where substr(key, 1, ?) = ? and window in (?, ?)",
                (len(prefix), prefix, window, window + 1)).fetchall()
        return {str(k): int(n) for k, n in rows}

    def flags(self) -> dict[str, str]:
        gen = self._gen.read()
        if gen != self._flags_gen:
            with self._lock:
                try:
                    rows = self._db.execute("select key, value from flags").fetchall()
                except sqlite3.Error as exc:
                    raise StateError(f"{self.path!r}: cannot read flags: {exc}") from exc
                self._flags = dict(rows)
                self._flags_gen = gen
        return self._flags

    def set_flag(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("insert into flags(key, value) values(?,?) on conflict(key) do update "
                       "set value=excluded.value", (key, value))
        self._gen.bump()

    def clear_flag(self, key: str) -> bool:
        with self._tx() as db:
            gone = db.execute("delete from flags where key=?", (key,)).rowcount > 0
        self._gen.bump()
        return gone

    def put_approval(self, approval: Approval) -> None:
        a = approval
        with self._tx() as db:
            db.execute("insert into approvals values(?,?,?,?,?,?,?,?,?,?)",
                       (a.id, a.digest, a.tool, a.agent, a.session, a.created, a.expires,
                        a.status, a.decided_by, a.note))

    def get_approval(self, approval_id: str) -> Approval | None:
        with self._lock:
            row = self._db.execute("select * from approvals where id=?",
                                   (approval_id,)).fetchone()
        return Approval(*row) if row else None

    def list_approvals(self, status: str | None = None) -> list[Approval]:
        with self._lock:
            if status is None:
                rows = self._db.execute("select * from approvals order by created").fetchall()
            else:
                rows = self._db.execute("select * from approvals where status=? order by "
                                        "created", (status,)).fetchall()
        return [Approval(*r) for r in rows]

    def decide_approval(self, approval_id: str, grant: bool, by: str, note: str,
                        now: float) -> Approval:
        from bastion._errors import ApprovalError

        with self._tx() as db:
            row = db.execute("select * from approvals where id=?", (approval_id,)).fetchone()
            if row is None:
                raise ApprovalError(f"approval {approval_id!r} not found")
            current = Approval(*row)
            if current.status != "pending":
                raise ApprovalError(f"approval {approval_id!r} is already {current.status}")
            if now >= current.expires:
                raise ApprovalError(f"approval {approval_id!r} has expired")
            status = "granted" if grant else "refused"
            db.execute("update approvals set status=?, decided_by=?, note=? where id=?",
                       (status, by, note, approval_id))
        return replace(current, status=status, decided_by=by, note=note)

    def consume_approval(self, approval_id: str, digest: str, now: float) -> Approval | None:
        with self._tx() as db:
            row = db.execute("select * from approvals where id=?", (approval_id,)).fetchone()
            if row is None:
                return None
            a = Approval(*row)
            if a.status != "granted" or a.digest != digest or now >= a.expires:
                return None
            db.execute("update approvals set status='used' where id=? and status='granted'",
                       (approval_id,))
        return replace(a, status="used")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._gen.close()
