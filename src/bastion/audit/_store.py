"""The audit log's storage format: targets, the SQLite schema, entries and checkpoints on disk.

Tables (one file per log; WAL mode for files):

* ``meta(name, value)`` — ``format`` (``"1"``), ``log_id`` (random hex, fixed at creation) and
  ``key_check`` (``HMAC-SHA256(mac_key, "bastion.audit.key-check.v1")`` in hex, so a wrong key is
  named as such rather than as an edited first entry).
* ``signers(key_id, public_key)`` — every Ed25519 key that has signed a checkpoint of this log,
  raw public key in hex, so a verifier needs only the MAC key.
* ``entries(seq, body, mac, leaf)`` — ``seq`` is the rowid, so storage order is seq order;
  ``body`` the exact canonical JSON bytes the MAC covers (with ``v``, ``seq``, ``prev``);
  ``mac`` hex; ``leaf`` the entry's 32-byte Merkle leaf hash, a cache verify recomputes.
* ``checkpoints(id, tree_size, body, signature)`` — ``body`` is the canonical JSON the signature
  covers: ``{"v", "tree_size", "root_hash", "ts", "key_id"}``; ``signature`` hex Ed25519.

Columns other than ``body``/``mac``/``signature`` are indexes; verification trusts only those.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion._canon import canonical_json
from bastion._errors import AuditError, ConfigError, without_password
from bastion._sqlite import create_private
from bastion.audit._keys import StrPath, public_key_id, raw_public_key, resolve_keys
from bastion.audit._merkle import CompactTree

__all__ = [
    "FORMAT_VERSION",
    "ZERO_MAC",
    "Checkpoint",
    "Reader",
    "Resumed",
    "blob",
    "connect",
    "create_log",
    "init_schema",
    "key_check",
    "read_meta",
    "resolve_target",
    "resume_log",
    "same_text",
    "sign_checkpoint",
]

FORMAT_VERSION = 1
ZERO_MAC = "0" * 64
_KEY_CHECK_LABEL = b"bastion.audit.key-check.v1"
_MEMORY = ":memory:"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signers (key_id TEXT PRIMARY KEY, public_key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, body BLOB NOT NULL, mac TEXT NOT NULL, leaf BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY, tree_size INTEGER NOT NULL, body BLOB NOT NULL,
    signature TEXT NOT NULL);
"""

AuditTarget = str | os.PathLike[str] | None


def resolve_target(target: AuditTarget) -> Path | None:
    """The database file a target names, or ``None`` for an in-memory log.

    Accepted: ``None``, ``":memory:"``, a filesystem path, or ``sqlite:///PATH`` (three slashes
    and a relative path, four for an absolute one, as SQLAlchemy reads it).
    """
    if target is None:
        return None
    text = os.fspath(target)
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme != "sqlite":
            raise ConfigError(
                f"audit target {without_password(text)!r}: the {scheme!r} backend is not "
                "available yet; use a file path or 'sqlite:///PATH'"
            )
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigError(f"audit target {without_password(text)!r}: expected "
                              "'sqlite:///PATH'")
        text = rest[1:]
    if text == _MEMORY:
        return None
    return Path(text)


def connect(
    path: Path | None, *, durable: bool = False, readonly: bool = False
) -> sqlite3.Connection:
    """Open the log's database in autocommit mode; transactions are explicit ``BEGIN``s."""
    try:
        if path is None:
            conn = sqlite3.connect(_MEMORY, check_same_thread=False, isolation_level=None)
        elif readonly:
            if not path.is_file():
                raise AuditError(f"{str(path)!r}: no audit log at this path")
            uri = f"file:{quote(str(path.resolve()))}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        else:
            create_private(path)
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        conn.execute("PRAGMA busy_timeout=5000")
    except (sqlite3.Error, OSError) as exc:
        raise AuditError(f"{str(path or _MEMORY)!r}: cannot open audit log: {exc}") from exc
    return conn


def init_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT name, value FROM meta").fetchall())


def blob(value: Any) -> bytes:
    """A stored BLOB column as bytes, whatever type an edit left in it (SQLite is dynamically
    typed: ``replace()`` on a BLOB yields TEXT)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return str(value).encode("utf-8")


def same_text(stored: Any, expected: str) -> bool:
    """Constant-time comparison of a stored text column (of any type) with ``expected``."""
    return hmac.compare_digest(blob(stored), expected.encode("ascii"))


def key_check(key: bytes) -> str:
    """A value that commits to the MAC key without revealing it."""
    return hmac.new(key, _KEY_CHECK_LABEL, hashlib.sha256).hexdigest()


def sign_checkpoint(
    signing_key: Ed25519PrivateKey, *, key_id: str, tree_size: int, root: bytes, ts: int,
    log_id: str
) -> tuple[int, bytes, str]:
    """Build and sign a checkpoint; returns the ``(tree_size, body, signature)`` row. The body
    names its log (``log_id``), so one signing key's checkpoints of two logs never pass for
    each other."""
    body = canonical_json(
        {
            "v": FORMAT_VERSION,
            "tree_size": tree_size,
            "root_hash": root.hex(),
            "ts": ts,
            "key_id": key_id,
            "log_id": log_id,
        }
    )
    return tree_size, body, signing_key.sign(body).hex()


class Checkpoint:
    """A checkpoint read back from storage: its signed body, parsed, and its signature.

    ``parse`` raises ``ValueError`` when the body is not a well-formed version-1 checkpoint.
    """

    __slots__ = ("body", "key_id", "log_id", "root", "signature", "tree_size", "ts")

    def __init__(self, body: bytes, signature: str) -> None:
        self.body = body
        self.signature = signature
        fields: Any = orjson.loads(body)
        if not isinstance(fields, dict) or fields.get("v") != FORMAT_VERSION:
            raise ValueError("not a version 1 checkpoint")
        size, root, ts, key_id = (fields.get(k) for k in ("tree_size", "root_hash", "ts", "key_id"))
        if not (isinstance(size, int) and size >= 0 and isinstance(ts, int)):
            raise ValueError("bad tree size or timestamp")
        if not (isinstance(root, str) and isinstance(key_id, str)):
            raise ValueError("bad root hash or key id")
        log_id = fields.get("log_id")  # absent only in checkpoints signed before it was added
        if log_id is not None and not isinstance(log_id, str):
            raise ValueError("bad log id")
        self.log_id: str | None = log_id
        self.tree_size: int = size
        self.root: bytes = bytes.fromhex(root)
        self.ts: int = ts
        self.key_id: str = key_id

    def signed_by(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(bytes.fromhex(self.signature), self.body)
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        """The signed checkpoint as JSON-able data: ``body`` (the signed text) and signature."""
        return {"body": self.body.decode("utf-8"), "signature": self.signature}


class Reader:
    """Serialised queries against a log's connection.

    A reader that owns its connection (a file opened read-only) holds one read transaction for
    its life, so every page it fetches comes from the same snapshot.
    """

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock, *, owned: bool) -> None:
        self._conn = conn
        self._lock = lock
        self._owned = owned
        if owned:
            conn.execute("BEGIN")

    def fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise AuditError(f"cannot read audit log: {exc}") from exc

    def close(self) -> None:
        if self._owned:
            self._conn.close()


@dataclass(frozen=True, slots=True)
class Resumed:
    """Where a writer continues a chain: next seq, previous MAC, tree and checkpoint state."""

    next_seq: int
    prev_mac: str
    tree: CompactTree
    checkpoint_size: int
    checkpoints: int
    log_id: str = ""


def create_log(conn: sqlite3.Connection, key: bytes, *, log_id: str) -> Resumed:
    """Write the meta rows of a new, empty log."""
    rows = [("format", str(FORMAT_VERSION)), ("log_id", log_id), ("key_check", key_check(key))]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO meta (name, value) VALUES (?, ?)", rows)
    conn.execute("COMMIT")
    return Resumed(0, ZERO_MAC, CompactTree(), 0, 0, log_id)


def resume_log(
    conn: sqlite3.Connection, key: bytes, meta: dict[str, str], *, where: str
) -> Resumed:
    """Check that an existing log can be continued with ``key`` and rebuild the writer's state.

    1. The format is version 1 and ``key_check`` matches ``key`` (else: wrong key).
    2. The last entry's MAC verifies over its stored bytes and its body's seq is its rowid.
    3. Scanning the stored leaf hashes finds exactly ``last seq + 1`` entries (no gaps) and
       rebuilds the compact tree.
    4. The latest checkpoint is signed by a registered signer, covers no more entries than
       exist, and its root equals the rebuilt tree's root at its size (nothing truncated or
       rewritten under it).

    Any failure raises ``AuditError``: a broken chain is verified and repaired, never extended.
    """
    if meta.get("format") != str(FORMAT_VERSION):
        raise AuditError(f"{where!r}: unsupported audit log format {meta.get('format')!r}")
    if not same_text(meta.get("key_check", ""), key_check(key)):
        raise AuditError(f"{where!r}: wrong mac key for this audit log")
    last = conn.execute("SELECT seq, body, mac FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    prev = ZERO_MAC
    if last is not None:
        seq, body, mac = last[0], blob(last[1]), last[2]
        expected = hmac.new(key, body, hashlib.sha256).hexdigest()
        if not same_text(mac, expected):
            raise AuditError(f"{where!r}: entry {seq}: mac mismatch; run 'bastion audit verify'")
        fields: Any = orjson.loads(body)
        if not isinstance(fields, dict) or fields.get("seq") != seq:
            raise AuditError(f"{where!r}: entry {seq}: stored under the wrong seq")
        prev = str(mac)
    row = conn.execute(
        "SELECT body, signature FROM checkpoints ORDER BY id DESC LIMIT 1"
    ).fetchone()
    checkpoint = _stored_checkpoint(conn, row, where=where) if row is not None else None
    log_id = meta.get("log_id", "")
    if checkpoint is not None and checkpoint.log_id not in (None, log_id):
        raise AuditError(f"{where!r}: the latest checkpoint was signed for another log "
                         f"({checkpoint.log_id!r}); run 'bastion audit verify'")
    tree, at_checkpoint = CompactTree(), None
    for (leaf,) in conn.execute("SELECT leaf FROM entries ORDER BY seq"):
        if checkpoint is not None and tree.size == checkpoint.tree_size:
            at_checkpoint = tree.root()
        tree.append(blob(leaf))
    if checkpoint is not None and tree.size == checkpoint.tree_size:
        at_checkpoint = tree.root()
    next_seq = 0 if last is None else last[0] + 1
    if tree.size != next_seq:
        raise AuditError(f"{where!r}: {next_seq - tree.size} entries missing; run verify")
    if checkpoint is not None and at_checkpoint != checkpoint.root:
        raise AuditError(
            f"{where!r}: entries do not match the latest checkpoint (tree size "
            f"{checkpoint.tree_size}); the log was truncated or rewritten"
        )
    count = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    size = checkpoint.tree_size if checkpoint is not None else 0
    return Resumed(next_seq, prev, tree, size, count, log_id)


def _stored_checkpoint(conn: sqlite3.Connection, row: Any, *, where: str) -> Checkpoint:
    try:
        checkpoint = Checkpoint(blob(row[0]), str(row[1]))
    except ValueError as exc:
        raise AuditError(f"{where!r}: latest checkpoint is malformed: {exc}") from exc
    found = conn.execute(
        "SELECT public_key FROM signers WHERE key_id = ?", (checkpoint.key_id,)
    ).fetchone()
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(found[0])) if found else None
    if public is None or not checkpoint.signed_by(public):
        raise AuditError(f"{where!r}: latest checkpoint signature does not verify")
    return checkpoint


def open_chain(path: Path | None, durable: bool, *, key: bytes | None, key_path: StrPath | None,
                signing_key: Ed25519PrivateKey | None, signing_key_path: StrPath | None
                ) -> tuple[sqlite3.Connection, bytes, Ed25519PrivateKey, Resumed]:
    """Connect, create the schema, find the keys, and continue (or start) the stored chain."""
    conn = connect(path, durable=durable)
    try:
        init_schema(conn)
        meta = read_meta(conn)
        if not meta and conn.execute("SELECT EXISTS (SELECT 1 FROM entries) OR EXISTS "
                                     "(SELECT 1 FROM checkpoints)").fetchone()[0]:
            # entries without their meta rows: tampered, and starting afresh would hide it
            raise AuditError(f"{str(path or ':memory:')!r}: the log holds entries but its meta "
                             "rows are gone (tampered); run 'bastion audit verify'")
        mac_key, signer = resolve_keys(
            path, existing=bool(meta), key=key, key_path=key_path,
            signing_key=signing_key, signing_key_path=signing_key_path,
        )
        if meta:
            resumed = resume_log(conn, mac_key, meta, where=str(path or ":memory:"))
        else:
            resumed = create_log(conn, mac_key, log_id=secrets.token_hex(16))
        public = signer.public_key()
        conn.execute(
            "INSERT OR IGNORE INTO signers (key_id, public_key) VALUES (?, ?)",
            (public_key_id(public), raw_public_key(public).hex()),
        )
    except sqlite3.Error as exc:
        conn.close()
        raise AuditError(f"{str(path or ':memory:')!r}: cannot open audit log: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn, mac_key, signer, resumed


@dataclass(frozen=True, slots=True)
class AuditStats:
    """A snapshot of the writer's counters. ``appended == written + failed + queue_depth`` once
    the writer is between batches; ``malformed`` entries are also counted in ``written``."""

    appended: int
    written: int
    failed: int
    queue_depth: int
    checkpoints: int
    malformed: int
