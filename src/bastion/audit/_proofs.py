"""Signed checkpoints and Merkle proofs as JSON-able dicts, and their offline checks.

A holder of an old checkpoint checks that the log only grew:

1. ``check_checkpoint(new, public_key=KEY)`` — the new checkpoint is signed by the expected
   key (and, with ``log_id=``, for the expected log);
2. ``check_consistency(prove_consistency(log, old["tree_size"], new["tree_size"]),
   old["root_hash"], new["root_hash"], old_size=old["tree_size"], new_size=new["tree_size"])``
   — the old tree is a prefix of the new one (the sizes, like the roots, are the holder's).

And that an entry is in the log: ``check_inclusion(prove_inclusion(log, seq), public_key=KEY)``,
which checks the entry's leaf hash, the signed checkpoint and the audit path against its root.
The checks need neither the log nor its MAC key; each returns ``False`` for anything malformed,
and without a ``public_key`` (a proof that carries its own key proves nothing: anyone can sign
a log they made up) unless ``trust_embedded_key=True`` asks only for internal consistency.
"""

from __future__ import annotations

from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion._errors import AuditError
from bastion.audit import _store
from bastion.audit._keys import public_key_id
from bastion.audit._merkle import (
    CompactTree,
    SubtreeRoot,
    entry_leaf_hash,
    subtree_consistency_proof,
    subtree_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from bastion.audit._verify import PAGE, AuditSource, opened

__all__ = [
    "check_checkpoint",
    "check_consistency",
    "check_inclusion",
    "latest_checkpoint",
    "prove_consistency",
    "prove_inclusion",
]

_CHECKPOINT = "SELECT body, signature FROM checkpoints"


def _checkpoint_json(reader: _store.Reader, row: Any) -> dict[str, Any]:
    try:
        checkpoint = _store.Checkpoint(_store.blob(row[0]), str(row[1]))
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise AuditError(f"a stored checkpoint is malformed ({exc}); run verify") from None
    found = reader.fetch("SELECT public_key FROM signers WHERE key_id = ?", (checkpoint.key_id,))
    return {
        "tree_size": checkpoint.tree_size,
        "root_hash": checkpoint.root.hex(),
        "ts": checkpoint.ts,
        "key_id": checkpoint.key_id,
        "log_id": checkpoint.log_id,
        **checkpoint.to_json(),
        "public_key": found[0][0] if found else None,
    }


def _find_checkpoint(reader: _store.Reader, size: int | None) -> dict[str, Any] | None:
    if size is None:
        rows = reader.fetch(f"{_CHECKPOINT} ORDER BY id DESC LIMIT 1")
    else:
        rows = reader.fetch(f"{_CHECKPOINT} WHERE tree_size = ? ORDER BY id LIMIT 1", (size,))
    return _checkpoint_json(reader, rows[0]) if rows else None


def latest_checkpoint(source: AuditSource) -> dict[str, Any] | None:
    """The newest signed checkpoint: ``tree_size``, ``root_hash``, ``ts``, ``key_id``, the signed
    ``body``, ``signature`` and signer ``public_key`` (hex); ``None`` before the first."""
    with opened(source) as (reader, _, _where):
        return _find_checkpoint(reader, None)


def check_checkpoint(
    checkpoint: dict[str, Any], *, public_key: Ed25519PublicKey | None = None,
    log_id: str | None = None, trust_embedded_key: bool = False
) -> bool:
    """True iff the signature over ``body`` verifies with ``public_key`` (the key the dict
    carries only with ``trust_embedded_key=True``; without either: False), the key id matches,
    the parsed fields equal the signed ones and, with ``log_id``, the body names that log."""
    if public_key is None and not trust_embedded_key:
        return False
    try:
        signed = _store.Checkpoint(checkpoint["body"].encode("utf-8"), checkpoint["signature"])
        key = public_key or Ed25519PublicKey.from_public_bytes(
            bytes.fromhex(checkpoint["public_key"])
        )
    except (KeyError, TypeError, ValueError, AttributeError, orjson.JSONDecodeError):
        return False
    if log_id is not None and signed.log_id != log_id:
        return False
    return (
        public_key_id(key) == signed.key_id
        and signed.signed_by(key)
        and checkpoint.get("tree_size") == signed.tree_size
        and checkpoint.get("root_hash") == signed.root.hex()
        and checkpoint.get("key_id") == signed.key_id
        and checkpoint.get("ts") == signed.ts
        and checkpoint.get("log_id") == signed.log_id
    )


def _db_roots(reader: _store.Reader) -> SubtreeRoot:
    """``MTH`` of stored leaf hashes ``[lo, hi)``, streamed a page at a time."""

    def root(lo: int, hi: int) -> bytes:
        tree = CompactTree()
        while tree.size < hi - lo:
            rows = reader.fetch(
                "SELECT leaf FROM entries WHERE seq >= ? AND seq < ? ORDER BY seq LIMIT ?",
                (lo + tree.size, hi, PAGE),
            )
            if not rows:
                raise AuditError(f"entries {lo + tree.size}..{hi - 1} are missing")
            for (leaf,) in rows:
                tree.append(_store.blob(leaf))
        return tree.root()

    return root


def prove_inclusion(
    source: AuditSource, seq: int, *, checkpoint_size: int | None = None
) -> dict[str, Any]:
    """Proof that entry ``seq`` is in the tree of a signed checkpoint: the latest, or the one of
    ``checkpoint_size``. Raises ``AuditError`` if no such checkpoint covers ``seq``."""
    with opened(source) as (reader, _, where):
        checkpoint = _find_checkpoint(reader, checkpoint_size)
        if checkpoint is None:
            raise AuditError(f"{where!r}: no checkpoint"
                             + (f" of tree size {checkpoint_size}" if checkpoint_size else "")
                             + "; flush the log first")
        size = checkpoint["tree_size"]
        if not 0 <= seq < size:
            raise AuditError(f"{where!r}: entry {seq} is not covered by the checkpoint of tree "
                             f"size {size}")
        rows = reader.fetch("SELECT body, mac FROM entries WHERE seq = ?", (seq,))
        if not rows:
            raise AuditError(f"{where!r}: entry {seq} is missing")
        body, mac = _store.blob(rows[0][0]), str(rows[0][1])
        try:
            bytes.fromhex(mac)
            text = body.decode("utf-8")
        except ValueError:  # UnicodeDecodeError too
            raise AuditError(f"{where!r}: entry {seq} is malformed (its mac or body); run "
                             "verify") from None
        path = subtree_inclusion_proof(_db_roots(reader), seq, size)
    return {
        "type": "inclusion",
        "index": seq,
        "tree_size": size,
        "leaf_hash": entry_leaf_hash(body, bytes.fromhex(mac)).hex(),
        "root_hash": checkpoint["root_hash"],
        "audit_path": [node.hex() for node in path],
        "entry": {"body": text, "mac": mac},
        "checkpoint": checkpoint,
    }


def check_inclusion(proof: dict[str, Any], *, public_key: Ed25519PublicKey | None = None,
                    log_id: str | None = None, trust_embedded_key: bool = False) -> bool:
    """True iff the entry hashes to ``leaf_hash`` and carries seq ``index``, the checkpoint is
    validly signed (``check_checkpoint``: by ``public_key``, for ``log_id`` when given) for
    ``tree_size``/``root_hash``, and the audit path leads from the leaf to that root
    (RFC 9162 §2.1.3.2)."""
    try:
        index, size = proof["index"], proof["tree_size"]
        body = proof["entry"]["body"].encode("utf-8")
        leaf = entry_leaf_hash(body, bytes.fromhex(proof["entry"]["mac"]))
        claimed_leaf = bytes.fromhex(proof["leaf_hash"])
        root = bytes.fromhex(proof["root_hash"])
        path = [bytes.fromhex(node) for node in proof["audit_path"]]
        fields = orjson.loads(body)
        checkpoint = proof["checkpoint"]
        if type(index) is not int or type(size) is not int or not isinstance(fields, dict):
            return False
    except (KeyError, TypeError, ValueError, AttributeError, orjson.JSONDecodeError):
        return False
    return (
        leaf == claimed_leaf
        and fields.get("seq") == index
        and check_checkpoint(checkpoint, public_key=public_key, log_id=log_id,
                             trust_embedded_key=trust_embedded_key)
        and checkpoint["tree_size"] == size
        and checkpoint["root_hash"] == root.hex()
        and verify_inclusion(leaf, index, size, path, root)
    )


def prove_consistency(
    source: AuditSource, old_size: int, new_size: int | None = None
) -> dict[str, Any]:
    """Proof that the tree of ``old_size`` entries is a prefix of the one of ``new_size``
    (default: the latest checkpoint's). Carries the roots computed from storage, and the
    signed checkpoints of either size where they exist."""
    with opened(source) as (reader, _, where):
        if new_size is None:
            latest = _find_checkpoint(reader, None)
            if latest is None:
                raise AuditError(f"{where!r}: no checkpoint; flush the log first")
            new_size = int(latest["tree_size"])
        stored = reader.fetch("SELECT count(*) FROM entries")[0][0]
        if not 0 <= old_size <= new_size <= stored:
            raise AuditError(f"{where!r}: cannot prove tree size {old_size} against {new_size} "
                             f"with {stored} entries")
        roots = _db_roots(reader)
        proof = subtree_consistency_proof(roots, old_size, new_size)
        old_root, new_root = roots(0, old_size), roots(0, new_size)
        old_checkpoint = _find_checkpoint(reader, old_size)
        new_checkpoint = _find_checkpoint(reader, new_size)
    return {
        "type": "consistency",
        "old_size": old_size,
        "new_size": new_size,
        "old_root": old_root.hex(),
        "new_root": new_root.hex(),
        "proof": [node.hex() for node in proof],
        "old_checkpoint": old_checkpoint,
        "new_checkpoint": new_checkpoint,
    }


def check_consistency(proof: dict[str, Any], old_root_hex: str, new_root_hex: str, *,
                      old_size: int | None = None, new_size: int | None = None) -> bool:
    """True iff ``proof`` shows the tree with root ``old_root_hex`` (of ``old_size`` entries) is
    a prefix of the one with ``new_root_hex`` (RFC 9162 §2.1.4.2). The roots are the caller's,
    taken from checkpoints it trusts; the roots the proof carries are ignored. Pass the trusted
    checkpoints' sizes too (``old_size``/``new_size``): a proof that claims other sizes fails.
    An old size of 0 holds only for the empty root."""
    try:
        claimed_old, claimed_new = proof["old_size"], proof["new_size"]
        path = [bytes.fromhex(node) for node in proof["proof"]]
        old_root, new_root = bytes.fromhex(old_root_hex), bytes.fromhex(new_root_hex)
        if type(claimed_old) is not int or type(claimed_new) is not int:
            return False
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    if (old_size is not None and old_size != claimed_old) or \
            (new_size is not None and new_size != claimed_new):
        return False
    return verify_consistency(claimed_old, claimed_new, old_root, new_root, path)

