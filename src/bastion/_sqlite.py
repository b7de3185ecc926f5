"""The one way bastion opens SQLite and runs a write transaction (state, mesh, saga stores).

Connections are shared by threads behind a lock, in autocommit mode with explicit
``BEGIN IMMEDIATE`` transactions, so a write takes the database lock up front and two processes
can never interleave a read-modify-write. Files use WAL.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bastion._canon import LazyModule
from bastion._errors import ConfigError

if TYPE_CHECKING:
    import sqlite3
else:  # imported on first use: not needed by `import bastion` itself
    sqlite3 = LazyModule("sqlite3", globals())


def sqlite_path(target: str | os.PathLike[str] | None, what: str) -> str:
    """The SQLite file a store target names: ``None``, ``memory://`` and ``:memory:`` are
    in-process; ``sqlite:///path`` and a plain path are files. Any other URL scheme is a
    ``ConfigError`` naming ``what`` (its backend is not available)."""
    if target is None:
        return ":memory:"
    text = os.fspath(target)
    if text in ("memory://", ":memory:"):
        return ":memory:"
    if text.startswith("sqlite:///"):
        return text.removeprefix("sqlite:///") or ":memory:"
    if "://" in text:
        raise ConfigError(f"{what} backend {text.split('://', 1)[0]!r} is not available yet "
                          "(use a path or sqlite:///path)")
    return text


def create_private(path: str | os.PathLike[str]) -> None:
    """Create the database file ``path`` readable by its owner only (0600) when it does not
    exist yet: it holds approvals, kill switches, tool results and arguments. SQLite gives its
    ``-wal`` and ``-shm`` files the same mode; an existing file keeps the mode it has."""
    with contextlib.suppress(FileExistsError):  # a symlink: where it points (SQLite opens that)
        os.close(os.open(os.path.realpath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def connect(path: str, schema: str, *, synchronous: str = "normal") -> sqlite3.Connection:
    """Open (creating the folder, and the file as ``create_private``) and apply ``schema``;
    raises ``sqlite3.Error``/``OSError``."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        create_private(path)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
    if path != ":memory:":
        db.execute("pragma journal_mode=wal")
        db.execute(f"pragma synchronous={synchronous}")
    db.executescript(schema)
    return db


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.RLock,
                failure: Callable[[sqlite3.Error], Exception]) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` under ``lock``; rolled back on any exception; a SQLite
    error is raised as ``failure(error)``."""
    with lock:
        try:
            db.execute("begin immediate")
            try:
                yield db
            except BaseException:
                db.execute("rollback")
                raise
            db.execute("commit")
        except sqlite3.Error as exc:
            raise failure(exc) from exc
