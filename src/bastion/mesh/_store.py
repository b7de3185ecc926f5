"""Durable mesh state: the agent registry, the revocation list and the nonce store.

Three small protocols and one implementation of all three, ``MeshStore``, over two SQL
backends chosen by URL (``open_mesh_store``): SQLite (``SQLiteMeshStore``, the default: one file
shared by every process that opens it) and PostgreSQL (``PostgresMeshStore`` in
``bastion.mesh._store_pg``, for a fleet). ``MeshStore`` holds every statement and decision, written
once with ``?`` placeholders; a backend supplies only connections, transactions and the few
lines of SQL that differ (column types, placeholders, how pruning and write serialisation are
spelled). Operations that decide something are single atomic transactions:

1. ``claim_nonce`` inserts with ``on conflict do nothing`` and accepts only when a row was
   inserted, so of any number of processes racing on one nonce exactly one wins.
2. ``register`` and ``rotate`` read and then write; the backend serialises them against each
   other (SQLite ``begin immediate``, PostgreSQL a self-conflicting lock on ``agents``), so two
   writers can never both take one agent id or key.
3. ``revoke`` is idempotent; ``first_revoked`` checks every link of a chain, so revoking one link
   refuses every token delegated from it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bastion._errors import StateError
from bastion._sqlite import connect, sqlite_path, transaction
from bastion.mesh._errors import RegistryError
from bastion.mesh._keys import public_from_did, verify_rotation

if TYPE_CHECKING:
    from bastion.mesh._store_pg import PostgresMeshStore


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """A registered agent: its id, current DID, roles and status (``active`` | ``revoked``)."""

    agent_id: str
    did: str
    roles: tuple[str, ...]
    created: float
    status: str = "active"

    @property
    def active(self) -> bool:
        return self.status == "active"


class AgentRegistry(Protocol):
    def register(self, agent_id: str, did: str, *, roles: Iterable[str] = (),
                 now: float) -> AgentRecord: ...

    def get(self, agent_id: str) -> AgentRecord | None: ...

    def by_did(self, did: str) -> AgentRecord | None:
        """The agent whose current *or past* key is ``did``."""

    def rotate(self, agent_id: str, statement: dict[str, Any], *, now: float) -> AgentRecord: ...

    def is_current_key(self, did: str) -> bool:
        """True when ``did`` is the current key of an active agent."""

    def revoke_agent(self, agent_id: str) -> None: ...

    def agents(self) -> list[AgentRecord]: ...


class RevocationList(Protocol):
    def revoke(self, token_id: str, *, reason: str = "", now: float) -> None: ...

    def first_revoked(self, token_ids: Iterable[str]) -> str | None:
        """The first of ``token_ids`` that is revoked, else ``None``."""


class NonceStore(Protocol):
    def claim_nonce(self, scope: str, nonce: str, *, expires: float, now: float) -> bool:
        """Record ``nonce`` under ``scope`` until ``expires``; ``False`` if it is already held
        (a replay). Expired entries are purged first."""


# The schema of both backends; ``{float}`` is an 8-byte float (SQLite ``real``, PostgreSQL
# ``double precision``: PostgreSQL's ``real`` has 4 bytes and would round timestamps).
SCHEMA = """
create table if not exists agents (id text primary key, did text not null unique,
    roles text not null, created {float} not null, status text not null);
create table if not exists agent_keys (did text primary key, agent text not null,
    since {float} not null, retired {float}, statement text);
create table if not exists revoked (id text primary key, reason text, at {float} not null);
create table if not exists nonces (scope text not null, nonce text not null,
    expires {float} not null, primary key (scope, nonce));
create index if not exists nonces_expiry on nonces(expires);
"""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Statements(Protocol):
    """What a backend's transaction hands ``MeshStore``: ``execute`` with ``?`` placeholders."""

    def execute(self, sql: str, params: tuple[Any, ...] = (), /) -> Cursor: ...


def open_mesh_store(target: str | os.PathLike[str] | None) -> MeshStore:
    """The mesh store ``target`` names: ``None``/``memory://``: in-process; a path or
    ``sqlite:///path``: a shared SQLite file; ``postgresql://…`` (or ``postgres://…``, optional
    ``?schema=NAME``, default ``bastion_mesh``): PostgreSQL, which needs the ``postgres`` extra.
    Any other scheme is a ``ConfigError``."""
    if isinstance(target, str) and target.split("://", 1)[0] in ("postgresql", "postgres"):
        return _postgres(target)
    return SQLiteMeshStore(sqlite_path(target, "mesh store"))


def _postgres(url: str) -> PostgresMeshStore:
    from bastion.mesh._store_pg import PostgresMeshStore  # psycopg is imported only there

    return PostgresMeshStore(url)


class MeshStore:
    """``AgentRegistry``, ``RevocationList`` and ``NonceStore`` over one SQL database.

    Subclasses supply ``_tx`` (one transaction, serialised against other ``exclusive`` ones
    when asked), ``_read`` (one statement outside a transaction), ``close`` and ``PRUNE_NONCES``.
    Every method is thread-safe and safe to call from many processes at once.
    """

    where: str  # names the database in errors (never with a password)
    PRUNE_NONCES = "delete from nonces where expires < ?"

    def _tx(self, *, exclusive: bool = False) -> AbstractContextManager[Statements]:
        raise NotImplementedError

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _failed(self, exc: Exception) -> StateError:
        return StateError(f"{self.where!r}: mesh store failed: {exc}")

    # -- registry -----------------------------------------------------------------------------
    def register(self, agent_id: str, did: str, *, roles: Iterable[str] = (),
                 now: float) -> AgentRecord:
        """Register ``agent_id`` with key ``did``; ``RegistryError`` if either is taken."""
        if not agent_id or not isinstance(agent_id, str):
            raise RegistryError("an agent id must be a non-empty string")
        public_from_did(did)  # a malformed DID is refused here, not at first use
        record = AgentRecord(agent_id, did, tuple(sorted(set(roles))), now)
        with self._tx(exclusive=True) as db:
            if db.execute("select 1 from agents where id=?", (agent_id,)).fetchone():
                raise RegistryError(f"agent {agent_id!r} is already registered")
            if db.execute("select 1 from agent_keys where did=?", (did,)).fetchone():
                raise RegistryError(f"key {did!r} already belongs to an agent")
            db.execute("insert into agents values(?,?,?,?,?)",
                       (agent_id, did, json.dumps(record.roles), now, "active"))
            db.execute("insert into agent_keys values(?,?,?,?,?)", (did, agent_id, now, None, None))
        return record

    def get(self, agent_id: str) -> AgentRecord | None:
        rows = self._read("select id, did, roles, created, status from agents where id=?",
                          (agent_id,))
        return _record(rows[0]) if rows else None

    def by_did(self, did: str) -> AgentRecord | None:
        rows = self._read("select agent from agent_keys where did=?", (did,))
        return self.get(rows[0][0]) if rows else None

    def rotate(self, agent_id: str, statement: dict[str, Any], *, now: float) -> AgentRecord:
        """Move ``agent_id`` to the key named by a verified rotation statement (see
        ``verify_rotation``); the old key stays on record as retired."""
        with self._tx(exclusive=True) as db:
            row = db.execute("select id, did, roles, created, status from agents where id=?",
                             (agent_id,)).fetchone()
            if row is None:
                raise RegistryError(f"agent {agent_id!r} is not registered")
            current = _record(row)
            if not current.active:
                raise RegistryError(f"agent {agent_id!r} is revoked")
            new = verify_rotation(statement, agent_id=agent_id, current_did=current.did)
            if db.execute("select 1 from agent_keys where did=?", (new,)).fetchone():
                raise RegistryError(f"key {new!r} was already used")
            db.execute("update agents set did=? where id=?", (new, agent_id))
            db.execute("update agent_keys set retired=?, statement=? where did=?",
                       (now, json.dumps(statement, sort_keys=True), current.did))
            db.execute("insert into agent_keys values(?,?,?,?,?)", (new, agent_id, now, None, None))
        return AgentRecord(agent_id, new, current.roles, current.created)

    def is_current_key(self, did: str) -> bool:
        """True when ``did`` is the current key of an active agent (not retired, not revoked)."""
        rows = self._read("select k.retired, a.status, a.did from agent_keys k join agents a "
                          "on a.id = k.agent where k.did=?", (did,))
        return bool(rows) and rows[0][0] is None and rows[0][1] == "active" and rows[0][2] == did

    def key_current_at(self, did: str, at: float) -> bool:
        """True when ``did`` was the key of its agent at time ``at`` (it had not been retired
        by a rotation yet) and the agent is active now (a revoked agent's word counts for
        nothing, whenever it was given)."""
        rows = self._read("select k.retired, a.status from agent_keys k join agents a "
                          "on a.id = k.agent where k.did=?", (did,))
        return bool(rows) and rows[0][1] == "active" and (rows[0][0] is None or rows[0][0] > at)

    def revoke_agent(self, agent_id: str) -> None:
        with self._tx() as db:
            if db.execute("update agents set status='revoked' where id=?",
                          (agent_id,)).rowcount == 0:
                raise RegistryError(f"agent {agent_id!r} is not registered")

    def agents(self) -> list[AgentRecord]:
        """Every agent, ordered by id (code points: the same order on every backend)."""
        rows = self._read("select id, did, roles, created, status from agents", ())
        return sorted((_record(r) for r in rows), key=lambda r: r.agent_id)

    # -- revocation ---------------------------------------------------------------------------
    def revoke(self, token_id: str, *, reason: str = "", now: float) -> None:
        """Revoke one token link; every token whose chain contains it is refused from now on."""
        with self._tx() as db:
            db.execute("insert into revoked values(?,?,?) on conflict(id) do nothing",
                       (token_id, reason, now))

    def first_revoked(self, token_ids: Iterable[str]) -> str | None:
        ids = list(token_ids)
        if not ids:
            return None
        marks = ",".join("?" * len(ids))
        rows = self._read(f"select id from revoked where id in ({marks})", tuple(ids))
        hit = {r[0] for r in rows}
        return next((i for i in ids if i in hit), None)

    # -- nonces -------------------------------------------------------------------------------
    def claim_nonce(self, scope: str, nonce: str, *, expires: float, now: float) -> bool:
        with self._tx() as db:
            db.execute(self.PRUNE_NONCES, (now,))
            cur = db.execute("insert into nonces values(?,?,?) on conflict do nothing",
                             (scope, nonce, expires))
            return cur.rowcount == 1


class SQLiteMeshStore(MeshStore):
    """The mesh store in one SQLite file (or in memory); every process opening it shares it."""

    def __init__(self, path: str):
        self.path = self.where = path
        try:
            self._db = connect(path, SCHEMA.format(float="real"))
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"{path!r}: cannot open mesh store: {exc}") from exc
        self._lock = threading.RLock()

    @contextmanager
    def _tx(self, *, exclusive: bool = False) -> Iterator[Statements]:
        # ``begin immediate`` already serialises every write transaction: ``exclusive`` is free.
        with transaction(self._db, self._lock, self._failed) as db:
            yield db

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._failed(exc) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: Any) -> AgentRecord:
    return AgentRecord(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4])
