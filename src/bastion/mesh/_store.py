"""Durable mesh state: the agent registry, the revocation list and the nonce store.

Three small protocols, one SQLite implementation (``SQLiteMeshStore``) that serves all three from
one file shared by every process that opens it. The SQL is plain (text keys, integer/real columns,
``insert ... on conflict``), so a PostgreSQL implementation is the same statements over a
connection pool. Operations that decide something (``claim_nonce``, ``register``, ``rotate``)
are single atomic transactions: two processes can never both accept one nonce.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from bastion._errors import StateError
from bastion._sqlite import connect, sqlite_path, transaction
from bastion.mesh._errors import RegistryError
from bastion.mesh._keys import public_from_did, verify_rotation


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


_SCHEMA = """
create table if not exists agents (id text primary key, did text not null unique,
    roles text not null, created real not null, status text not null);
create table if not exists agent_keys (did text primary key, agent text not null,
    since real not null, retired real, statement text);
create table if not exists revoked (id text primary key, reason text, at real not null);
create table if not exists nonces (scope text not null, nonce text not null,
    expires real not null, primary key (scope, nonce));
create index if not exists nonces_expiry on nonces(expires);
"""


def open_mesh_store(target: str | os.PathLike[str] | None) -> SQLiteMeshStore:
    """``None``/``memory://``: in-process; a path or ``sqlite:///path``: a shared file."""
    return SQLiteMeshStore(sqlite_path(target, "mesh store"))


class SQLiteMeshStore:
    """``AgentRegistry``, ``RevocationList`` and ``NonceStore`` in one SQLite file."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._db = connect(path, _SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"{path!r}: cannot open mesh store: {exc}") from exc
        self._lock = threading.RLock()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock, lambda exc: StateError(
            f"{self.path!r}: mesh store failed: {exc}"))

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"{self.path!r}: mesh store failed: {exc}") from exc

    # -- registry -----------------------------------------------------------------------------
    def register(self, agent_id: str, did: str, *, roles: Iterable[str] = (),
                 now: float) -> AgentRecord:
        """Register ``agent_id`` with key ``did``; ``RegistryError`` if either is taken."""
        if not agent_id or not isinstance(agent_id, str):
            raise RegistryError("an agent id must be a non-empty string")
        public_from_did(did)  # a malformed DID is refused here, not at first use
        record = AgentRecord(agent_id, did, tuple(sorted(set(roles))), now)
        with self._tx() as db:
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
        with self._tx() as db:
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

    def revoke_agent(self, agent_id: str) -> None:
        with self._tx() as db:
            if db.execute("update agents set status='revoked' where id=?",
                          (agent_id,)).rowcount == 0:
                raise RegistryError(f"agent {agent_id!r} is not registered")

    def agents(self) -> list[AgentRecord]:
        rows = self._read("select id, did, roles, created, status from agents order by id", ())
        return [_record(r) for r in rows]

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
            db.execute("delete from nonces where expires < ?", (now,))
            cur = db.execute("insert into nonces values(?,?,?) on conflict do nothing",
                             (scope, nonce, expires))
            return cur.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: Any) -> AgentRecord:
    return AgentRecord(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4])
