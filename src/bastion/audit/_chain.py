"""The head of an audit chain: where every audit entry and checkpoint is built, in one place.

Sealing a batch of event bodies, for each body in order:

1. add ``v`` (format version), ``seq`` (0-based, gap-free) and ``prev`` (the previous entry's
   MAC in hex, 64 zeros for seq 0);
2. encode the whole dict with ``canonical_json`` (a non-dict ``Mapping`` is materialised first,
   here on the writer's thread). A body that is not a mapping, uses a reserved field (``v``,
   ``seq``, ``prev``, ``mac``), fails to build or cannot be encoded is replaced by an
   ``audit.malformed`` entry naming the error: its place in the chain is kept and counted.
   What JSON cannot carry as it is (``repaired``: a NaN, a lone surrogate, a key that is not
   text) is recorded in its tagged form, and a caller's map that reads as a tagged form as
   ``{"$obj": map}`` (the kernel's own events are tagged already);
3. ``mac = HMAC-SHA256(key, canonical bytes)``, so every field is covered;
4. leaf hash ``SHA-256(0x00 || canonical bytes || raw 32-byte mac)`` joins the Merkle tree;
5. if ``checkpoint_every`` entries were added since the last checkpoint, sign one.

Sealing does not move the head; ``advance`` does, once the caller has committed the rows. A
failed commit therefore leaves the head where storage is.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion._canon import canonical_json, repaired
from bastion.audit._keys import public_key_id
from bastion.audit._merkle import CompactTree
from bastion.audit._store import FORMAT_VERSION, Resumed, sign_checkpoint

__all__ = ["Chain", "Sealed"]

EntryRow = tuple[int, bytes, str, bytes]
CheckpointRow = tuple[int, bytes, str]
_sha256 = hashlib.sha256


@dataclass(frozen=True, slots=True)
class Sealed:
    """A batch ready to store: entry rows, an optional checkpoint row, and the head after it."""

    rows: list[EntryRow]
    checkpoint: CheckpointRow | None
    malformed: int
    next_seq: int
    prev_mac: str
    tree: CompactTree


def encode_entry(body: Any, seq: int, prev: str) -> bytes:
    """Steps 1-2 for a well-formed body; ``TypeError``/``ValueError`` otherwise."""
    if type(body) is not dict:
        if not isinstance(body, Mapping):
            raise TypeError(f"event body must be a mapping, not {type(body).__name__!r}")
        body = dict(body)  # a lazy event is built here, on the writer's thread
    if "v" in body or "seq" in body or "prev" in body or "mac" in body:
        raise ValueError("event body uses a reserved field ('v', 'seq', 'prev' or 'mac')")
    return canonical_json({**body, "v": FORMAT_VERSION, "seq": seq, "prev": prev})


def malformed_body(body: Any, exc: Exception, ts: int) -> dict[str, Any]:
    """The body recorded in place of one that cannot be encoded: encodable whatever ``body``
    and ``exc`` hold (text that is not valid UTF-8 is escaped), with the body's id and kind
    where they can be read at all."""
    def text(value: Any, limit: int) -> str | None:
        if not isinstance(value, str):
            return None
        return value[:limit].encode("utf-8", "backslashreplace").decode("utf-8")

    ident = kind = None
    with contextlib.suppress(Exception):  # a lazy body may fail again in any way
        if isinstance(body, Mapping):
            ident, kind = text(body.get("id"), 500), text(body.get("kind"), 100)
    return {
        "kind": "audit.malformed",
        "error": text(str(exc), 500),
        "ts": ts,
        "id": ident,
        "of": kind,
    }


class Chain:
    """Chain head state: next seq, previous MAC, compact Merkle tree, last checkpoint size.

    Not thread-safe: the writer serialises ``seal``/``advance``/``checkpoint`` under its lock.
    """

    def __init__(
        self,
        key: bytes,
        signing_key: Ed25519PrivateKey,
        resumed: Resumed,
        *,
        checkpoint_every: int,
        clock: Callable[[], int],
    ) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self._signing_key = signing_key
        self.key_id = public_key_id(signing_key.public_key())
        self._every = checkpoint_every
        self._clock = clock
        self.next_seq = resumed.next_seq
        self.prev_mac = resumed.prev_mac
        self.tree = resumed.tree
        self.checkpoint_size = resumed.checkpoint_size
        self.log_id = resumed.log_id

    def seal(self, bodies: list[Any]) -> Sealed:
        """Steps 1-5 for ``bodies``, without moving the head."""
        seq, prev, tree, mac0 = self.next_seq, self.prev_mac, self.tree.copy(), self._mac
        rows: list[EntryRow] = []
        malformed = 0
        for body in bodies:
            try:
                data = encode_entry(body, seq, prev)
                if b'{"$' in data and not getattr(body, "tagged", False):
                    # a caller's map that reads as a tagged form: recorded as {"$obj": map}
                    data = encode_entry(repaired(body), seq, prev)
            except Exception as exc:  # a lazy Mapping may fail in any way while it is built
                try:  # text with a lone surrogate, a NaN: recorded in their tagged forms
                    data = encode_entry(repaired(body), seq, prev)
                except Exception:
                    malformed += 1
                    data = encode_entry(malformed_body(body, exc, self._clock()), seq, prev)
            h = mac0.copy()
            h.update(data)
            raw = h.digest()
            leaf = _sha256(b"\x00" + data + raw).digest()
            tree.append(leaf)
            prev = raw.hex()
            rows.append((seq, data, prev, leaf))
            seq += 1
        due = tree.size - self.checkpoint_size >= self._every
        checkpoint = self._sign(tree) if due else None
        return Sealed(rows, checkpoint, malformed, seq, prev, tree)

    def advance(self, sealed: Sealed) -> None:
        """Move the head past a batch whose rows have been committed."""
        self.next_seq, self.prev_mac, self.tree = sealed.next_seq, sealed.prev_mac, sealed.tree
        if sealed.checkpoint is not None:
            self.checkpoint_size = sealed.checkpoint[0]

    def checkpoint(self) -> CheckpointRow | None:
        """A checkpoint of the current head, or ``None`` if the last one already covers it.
        Call ``checkpoint_stored`` once it is committed."""
        return self._sign(self.tree) if self.tree.size > self.checkpoint_size else None

    def checkpoint_stored(self, row: CheckpointRow) -> None:
        self.checkpoint_size = row[0]

    def _sign(self, tree: CompactTree) -> CheckpointRow:
        return sign_checkpoint(self._signing_key, key_id=self.key_id, tree_size=tree.size,
                               root=tree.root(), ts=self._clock(), log_id=self.log_id)
