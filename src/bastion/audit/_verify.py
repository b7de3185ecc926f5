"""Reading and verifying an audit log, streaming: memory stays bounded however long the log.

A *source* is a log file path (or ``sqlite:///`` URL) or an open ``AuditLog`` (the only way to
read an in-memory log). Files are opened read-only, in one read transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion._errors import AuditError, ConfigError
from bastion.audit import _store
from bastion.audit._keys import StrPath, load_mac_key, public_key_id
from bastion.audit._log import AuditLog
from bastion.audit._merkle import CompactTree, entry_leaf_hash

__all__ = ["AuditSource", "VerifyReport", "opened", "read_events", "verify"]

AuditSource = str | os.PathLike[str] | AuditLog
PAGE = 1000
_MIN_SEQ = -(2**63)
_HEX_MAC = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Outcome of ``verify``. On failure ``entries``/``checkpoints`` count what verified before
    the first problem, ``reason`` names it and ``first_bad_seq`` is the position of the first
    entry that is wrong or missing (``None`` when the problem is not an entry's)."""

    ok: bool
    entries: int
    checkpoints: int
    first_bad_seq: int | None = None
    reason: str | None = None


@contextmanager
def opened(source: AuditSource) -> Iterator[tuple[_store.Reader, bytes | None, str]]:
    """A reader over ``source``, the MAC key it was opened with (``AuditLog`` only), its name."""
    if isinstance(source, AuditLog):
        reader, key = source._reader()
        yield reader, key, str(source.path or ":memory:")
        return
    path = _store.resolve_target(source)
    if path is None:
        raise AuditError("an in-memory audit log can only be read through its AuditLog")
    reader = _store.Reader(_store.connect(path, readonly=True), threading.Lock(), owned=True)
    try:
        yield reader, None, str(path)
    finally:
        reader.close()


EntryRow = tuple[int, bytes, str, bytes]


def _entries(reader: _store.Reader, since: int = _MIN_SEQ) -> Iterator[EntryRow]:
    """Every stored entry row from seq ``since`` on (the very lowest seq included) in storage
    (rowid = seq column) order, a page at a time."""
    select = "SELECT seq, body, mac, leaf FROM entries WHERE seq {} ? ORDER BY seq LIMIT ?"
    query, last = select.format(">="), since
    while True:
        rows = reader.fetch(query, (last, PAGE))
        query = select.format(">")
        for seq, body, mac, leaf in rows:
            yield seq, _store.blob(body), str(mac), _store.blob(leaf)
        if len(rows) < PAGE:
            return
        last = rows[-1][0]


def read_events(
    source: AuditSource, *, since_seq: int = 0, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """Parsed entries (body fields with ``v``, ``seq``, ``prev``, plus ``mac``) from
    ``since_seq`` on, in seq order. Reads only: run ``verify`` to trust them."""
    if limit is not None and limit <= 0:
        return
    count = 0
    with opened(source) as (reader, _, where):
        for seq, body, mac, _leaf in _entries(reader, max(since_seq, 0)):
            try:
                event: dict[str, Any] = orjson.loads(body)
                event["mac"] = mac
            except (orjson.JSONDecodeError, TypeError):
                raise AuditError(f"{where!r}: entry {seq}: unreadable body; run verify") from None
            yield event
            count += 1
            if limit is not None and count >= limit:
                return


def verify(
    source: AuditSource,
    *,
    key: bytes | None = None,
    key_path: StrPath | None = None,
    public_key: Ed25519PublicKey | Collection[Ed25519PublicKey] | None = None,
) -> VerifyReport:
    """Check the whole log. Raises ``AuditError``/``ConfigError`` only if it cannot be read.

    1. Meta: format version 1, and ``key_check`` matches the MAC key (else: wrong key).
    2. Checkpoints, in storage order: each body parses, matches its ``tree_size`` column, grows
       strictly, names this log (``log_id``, when it does: checkpoints signed before it was
       added do not), names a known signer (or one of the pinned ``public_key``: a key or a
       collection of keys, for a log whose signing key was rotated) and its signature
       verifies. A missing table of the log is tampering too.
    3. Entries, in storage order, counting positions from 0; for each, in this order: the MAC
       over the stored bytes; the body parses as version 1; its ``seq`` equals the position;
       its ``prev`` equals the previous entry's MAC; the seq column and the stored leaf hash
       agree with the body. The leaf joins the tree, and a checkpoint of this size must have
       this root.
    4. No checkpoint may cover more entries than exist (a truncated tail).

    Key: ``key``, else ``key_path``, else the ``AuditLog``'s own, else ``<db>.key``.
    """
    pinned = None if public_key is None else (
        [public_key] if isinstance(public_key, Ed25519PublicKey) else list(public_key))
    with opened(source) as (reader, own_key, where):
        key = _mac_key(key, key_path, own_key, where)
        return _Verifier(reader, key, pinned).run()


def _mac_key(key: bytes | None, key_path: StrPath | None, own: bytes | None, where: str) -> bytes:
    """``key``, else the one in ``key_path``, else the ``AuditLog``'s own, else ``<db>.key``."""
    if key is not None:
        return key
    if key_path is None and own is not None:
        return own
    key_file = key_path or f"{where}.key"
    try:
        return load_mac_key(key_file)
    except FileNotFoundError:
        raise AuditError(f"{os.fspath(key_file)!r}: mac key file not found") from None


def verify_tail(source: AuditSource, *, since_seq: int, prev_mac: str,
                key: bytes | None = None, key_path: StrPath | None = None) -> VerifyReport:
    """Check only the entries from ``since_seq`` on: each entry's MAC over its stored bytes,
    its seq, and that it chains to ``prev_mac`` (the MAC of entry ``since_seq - 1``, which the
    caller verified before). For readers that keep up with a log incrementally; it does not
    check checkpoints or earlier entries — run ``verify`` for that. ``entries`` counts the
    entries checked; the report names the first bad one like ``verify``.
    """
    if not isinstance(prev_mac, str) or _HEX_MAC.fullmatch(prev_mac) is None:
        raise ConfigError("verify_tail: 'prev_mac' must be the 64 lower-case hex digits of a mac")
    with opened(source) as (reader, own_key, where):
        verifier = _Verifier(reader, _mac_key(key, key_path, own_key, where), None)
        try:
            verifier._check_tables()
            verifier._check_meta()
            if since_seq > 0:
                verifier._check_last_seen(since_seq - 1, prev_mac)
            verifier._check_entries(start=since_seq, prev=prev_mac)
        except _Failed as failed:
            return VerifyReport(False, verifier._entries, 0, failed.first_bad_seq, failed.reason)
        return VerifyReport(True, verifier._entries, 0)


class _Failed(Exception):
    def __init__(self, reason: str, first_bad_seq: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.first_bad_seq = first_bad_seq


class _Verifier:
    def __init__(self, reader: _store.Reader, key: bytes,
                 pinned: list[Ed25519PublicKey] | None) -> None:
        self._reader = reader
        self._key = key
        self._pinned = None if pinned is None else {public_key_id(k): k for k in pinned}
        self._log_id: str | None = None
        self._entries = 0
        self._checkpoints: list[tuple[int, bytes]] = []
        self._verified_checkpoints = 0

    def run(self) -> VerifyReport:
        try:
            self._check_tables()
            self._check_meta()
            self._load_checkpoints()
            self._check_entries()
        except _Failed as failed:
            return VerifyReport(False, self._entries, self._verified_checkpoints,
                                failed.first_bad_seq, failed.reason)
        return VerifyReport(True, self._entries, self._verified_checkpoints)

    def _check_tables(self) -> None:
        found = {row[0] for row in self._reader.fetch(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in ("meta", "entries", "checkpoints", "signers"):
            if table not in found:
                raise _Failed(f"table {table!r} is missing (dropped)", None)

    def _check_meta(self) -> None:
        meta = dict(self._reader.fetch("SELECT name, value FROM meta"))
        log_id = meta.get("log_id")
        self._log_id = log_id if isinstance(log_id, str) else None
        if meta.get("format") != str(_store.FORMAT_VERSION):
            raise _Failed(f"unsupported audit log format {meta.get('format')!r}", None)
        if not _store.same_text(meta.get("key_check", ""), _store.key_check(self._key)):
            raise _Failed("wrong mac key for this log (key check mismatch): the key given is not "
                          "this log's, or the log's key check was rewritten", None)

    def _signer(self, index: int, checkpoint: _store.Checkpoint) -> Ed25519PublicKey:
        where = f"checkpoint {index} (tree size {checkpoint.tree_size})"
        if self._pinned is not None:
            if checkpoint.key_id not in self._pinned:
                raise _Failed(f"{where}: signed by {checkpoint.key_id!r}, not a pinned key "
                              f"({', '.join(sorted(self._pinned))})", None)
            return self._pinned[checkpoint.key_id]
        found = self._reader.fetch(
            "SELECT public_key FROM signers WHERE key_id = ?", (checkpoint.key_id,)
        )
        try:
            public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(found[0][0]))
        except (IndexError, ValueError, TypeError):
            raise _Failed(f"{where}: signed by unknown key {checkpoint.key_id!r}", None) from None
        if public_key_id(public) != checkpoint.key_id:
            raise _Failed(f"{where}: signer {checkpoint.key_id!r} is registered wrongly", None)
        return public

    def _load_checkpoints(self) -> None:
        last_id, index, size = -1, 0, -1
        while rows := self._reader.fetch(
            "SELECT id, tree_size, body, signature FROM checkpoints WHERE id > ? "
            "ORDER BY id LIMIT ?", (last_id, PAGE)
        ):
            for row_id, column_size, body, signature in rows:
                last_id = row_id
                try:
                    checkpoint = _store.Checkpoint(_store.blob(body), str(signature))
                except ValueError as exc:
                    raise _Failed(f"checkpoint {index}: malformed ({exc})", None) from None
                where = f"checkpoint {index} (tree size {checkpoint.tree_size})"
                if column_size != checkpoint.tree_size:
                    raise _Failed(f"{where}: stored under tree size {column_size}", None)
                if not checkpoint.signed_by(self._signer(index, checkpoint)):
                    raise _Failed(f"{where}: bad signature", None)
                if checkpoint.log_id is not None and checkpoint.log_id != self._log_id:
                    raise _Failed(f"{where}: signed for another log ({checkpoint.log_id!r})",
                                  None)
                if checkpoint.tree_size <= size:
                    raise _Failed(f"{where}: does not grow past {size} (reordered)", None)
                size = checkpoint.tree_size
                self._checkpoints.append((size, checkpoint.root))
                index += 1

    def _check_last_seen(self, seq: int, mac: str) -> None:
        """Entry ``seq`` (verified by the caller before) is still there, with ``mac``."""
        rows = self._reader.fetch("select mac from entries where seq = ?", (seq,))
        if not rows:
            top = self._reader.fetch("select max(seq) from entries")
            last = top[0][0] if top and top[0][0] is not None else -1
            first = min(last + 1, seq)
            raise _Failed(f"entry {seq}, verified before, is gone (entries from {first} deleted "
                          "or truncated)", first)
        if not _store.same_text(rows[0][0], mac):
            raise _Failed(f"entry {seq}: its mac is not the one verified before (edited)", seq)

    def _check_entries(self, start: int = 0, prev: str = _store.ZERO_MAC) -> None:
        mac0 = hmac.new(self._key, digestmod=hashlib.sha256)
        tree, position = CompactTree(), start
        checkpoints = iter(enumerate(self._checkpoints if start == 0 else []))
        due = next(checkpoints, None)
        due = self._reach(due, checkpoints, tree)
        rows = _entries(self._reader) if start == 0 else _entries(self._reader, start)
        for column_seq, body, mac, leaf in rows:  # a full check also sees negative seqs
            where = f"entry {position}"
            h = mac0.copy()
            h.update(body)
            raw = h.digest()
            if not _store.same_text(mac, raw.hex()):
                raise _Failed(f"{where}: mac mismatch (edited)", position)
            try:
                fields: Any = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise _Failed(f"{where}: unreadable body", position) from None
            if not isinstance(fields, dict) or fields.get("v") != _store.FORMAT_VERSION:
                raise _Failed(f"{where}: not a version 1 entry", position)
            seq = fields.get("seq")
            if seq != position or type(seq) is not int:
                how = "deleted or reordered" if isinstance(seq, int) and seq > position else (
                    "inserted or reordered")
                raise _Failed(f"{where}: expected seq {position}, found {seq} ({how})", position)
            if fields.get("prev") != prev:
                raise _Failed(f"{where}: prev is not the mac of entry {position - 1}", position)
            if column_seq != position:
                raise _Failed(f"{where}: stored under seq {column_seq}", position)
            if leaf != entry_leaf_hash(body, raw):
                raise _Failed(f"{where}: stored leaf hash does not match the entry", position)
            tree.append(leaf)
            prev = mac
            position += 1
            self._entries = position - start
            due = self._reach(due, checkpoints, tree)
        if due is not None:
            index, (size, _root) = due
            raise _Failed(f"checkpoint {index} covers {size} entries but only {position} exist "
                          "(truncated)", position)

    def _reach(
        self,
        due: tuple[int, tuple[int, bytes]] | None,
        rest: Iterator[tuple[int, tuple[int, bytes]]],
        tree: CompactTree,
    ) -> tuple[int, tuple[int, bytes]] | None:
        """Check the checkpoint due at the tree's current size; return the next one due."""
        while due is not None and due[1][0] == tree.size:
            index, (size, root) = due
            if tree.root() != root:
                raise _Failed(f"checkpoint {index} (tree size {size}): root does not match "
                              "the entries", None)
            self._verified_checkpoints += 1
            due = next(rest, None)
        return due
