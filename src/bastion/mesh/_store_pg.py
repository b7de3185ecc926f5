"""The mesh store on PostgreSQL (``postgresql://…``): one registry for a fleet of processes.

URL: ``postgresql://USER:PASSWORD@HOST:PORT/DB?schema=NAME&…``. ``schema`` (default
``bastion_mesh``; lower-case letters, digits, ``_``) holds the tables; every other part of the URL
goes to libpq unchanged. Schema and tables are created on first use, idempotently:

1. connect (autocommit) and ``set search_path`` to the schema, so ``MeshStore``'s statements name
   bare tables on both backends;
2. when the schema's last object (the ``nonces`` expiry index) exists, stop: the schema is
   created in one transaction, so everything else exists too;
3. else, in one transaction, take an advisory lock derived from the schema name, so processes
   that start together do not race on the DDL (``create … if not exists`` alone is not
   race-free in PostgreSQL); create the schema when ``pg_namespace`` lacks it, then each table
   and index ``if not exists``.

One connection per store, shared by threads behind a lock (SQLite's model). Decisions run in
explicit transactions; registry writes first take ``share row exclusive`` on ``agents``, which
conflicts with itself and with every write but not with reads, as SQLite's ``begin immediate``
does. A connection that breaks fails the call in progress with ``StateError`` (fail closed) and
is opened again on the next call. psycopg is imported here only, when a store is opened.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from bastion._errors import ConfigError, StateError
from bastion.mesh._store import SCHEMA, Cursor, MeshStore, Statements

if TYPE_CHECKING:
    import psycopg

DEFAULT_SCHEMA = "bastion_mesh"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresMeshStore(MeshStore):
    """``AgentRegistry``, ``RevocationList`` and ``NonceStore`` in one PostgreSQL schema."""

    # Rows another process is already pruning are skipped, not waited for (nor deadlocked on).
    PRUNE_NONCES = ("delete from nonces where ctid = any(array(select ctid from nonces "
                    "where expires < ? for update skip locked))")

    def __init__(self, url: str):
        try:
            import psycopg  # checked first, so that the error names the fix
        except ImportError:
            raise ConfigError("mesh store 'postgresql': the psycopg package is not installed "
                              "(pip install 'bastion[postgres]')") from None
        self.where = redact_url(url)
        self._secrets = _passwords(url)
        self._conninfo, self.schema = split_url(url, self.where)
        self._lock = threading.RLock()
        self._db: psycopg.Connection[Any] | None = None
        self._ready = False  # schema and tables exist
        self._closed = False
        try:
            with self._lock:
                self._connection()
        except psycopg.Error as exc:
            raise StateError(f"{self.where!r}: cannot open mesh store: "
                             f"{_scrub(str(exc), self._secrets)}") from None

    def _failed(self, exc: Exception) -> StateError:
        return StateError(f"{self.where!r}: mesh store failed: "
                          f"{_scrub(str(exc), self._secrets)}")

    def _connection(self) -> psycopg.Connection[Any]:
        import psycopg
        from psycopg import sql

        if self._closed:
            raise StateError(f"{self.where!r}: mesh store is closed")
        if self._db is not None and not self._db.closed:
            return self._db
        self._db = None
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            schema = sql.Identifier(self.schema)
            conn.execute(sql.SQL("set search_path to {}").format(schema))
            if not self._ready:
                self._create_schema(conn)
                self._ready = True
        except BaseException:
            conn.close()
            raise
        self._db = conn
        return conn

    def _create_schema(self, conn: psycopg.Connection[Any]) -> None:
        from psycopg import sql

        # The last object of SCHEMA, created in the same transaction as the rest: when it exists,
        # so does everything, and no DDL (nor its table locks) is needed.
        last = f"{self.schema}.nonces_expiry"
        row = conn.execute("select to_regclass(%s)", (last,)).fetchone()
        if row is not None and row[0] is not None:
            return
        with conn.transaction():
            conn.execute("select pg_advisory_xact_lock(%s)", (_lock_key(self.schema),))
            if not conn.execute("select 1 from pg_namespace where nspname = %s",
                                (self.schema,)).fetchone():
                conn.execute(sql.SQL("create schema {}").format(sql.Identifier(self.schema)))
            for statement in SCHEMA.format(float="double precision").split(";"):
                if statement.strip():
                    conn.execute(statement)

    @contextmanager
    def _tx(self, *, exclusive: bool = False) -> Iterator[Statements]:
        import psycopg

        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    if exclusive:
                        conn.execute("lock table agents in share row exclusive mode")
                    yield _Placeholders(conn)
            except psycopg.Error as exc:
                raise self._failed(exc) from None  # the driver's error may quote the URL

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        import psycopg

        with self._lock:
            try:
                return self._connection().execute(_pg(sql), params).fetchall()
            except psycopg.Error as exc:
                raise self._failed(exc) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None


class _Placeholders:
    """A connection whose ``execute`` takes ``MeshStore``'s ``?`` placeholders."""

    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.Connection[Any]):
        self._conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = (), /) -> Cursor:
        return self._conn.execute(_pg(sql), params)


def _pg(sql: str) -> str:
    # MeshStore's statements hold no literal ``?`` or ``%``: placeholders translate one to one.
    return sql.replace("?", "%s")


def _lock_key(schema: str) -> int:
    digest = hashlib.sha256(f"bastion.mesh.schema:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def split_url(url: str, where: str) -> tuple[str, str]:
    """``(libpq URL without schema, schema)``; ``ConfigError`` for a malformed schema name."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [v for k, v in query if k == "schema"]
    schema = names[-1] if names else DEFAULT_SCHEMA
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(f"{where!r}: schema {schema!r} must be 1-63 lower-case letters, "
                          "digits or '_', not starting with a digit")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _passwords(url: str) -> tuple[str, ...]:
    """Every spelling of the password(s) ``url`` holds (as written and percent-decoded)."""
    parts = urlsplit(url)
    found = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "password"]
    user = parts.netloc.rpartition("@")[0]
    if ":" in user:
        found.append(user.split(":", 1)[1])
    spelt = {form for p in found for form in (p, unquote(p)) if form}
    return tuple(sorted(spelt, key=len, reverse=True))


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` (a driver's error, which may quote the URL it could not parse) without them."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for errors and logs; ``ConfigError``
    (naming no part of it) when it cannot be read as a URL."""
    try:
        urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": the message quotes nothing of the URL
        raise ConfigError(f"mesh store: malformed postgresql URL ({exc})") from None
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, hosts = netloc.rpartition("@")
        if ":" in user:
            netloc = f"{user.split(':', 1)[0]}:***@{hosts}"
    query = [(k, "***" if k == "password" else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*")))
