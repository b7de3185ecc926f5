"""Inclusion and consistency proofs: JSON round trips, and any tampering fails the check."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from audit_support import MAC_KEY, SIGNING_KEY, event
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion._errors import AuditError
from bastion.audit import (
    AuditLog,
    check_checkpoint,
    check_consistency,
    check_inclusion,
    latest_checkpoint,
    prove_consistency,
    prove_inclusion,
)


def grow(db: Path, start: int, stop: int) -> dict[str, Any]:
    with AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True,
                       checkpoint_every=4) as log:
        for i in range(start, stop):
            log.append(event(i))
    checkpoint = latest_checkpoint(db)
    assert checkpoint is not None
    return checkpoint


def roundtrip(value: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(value))
    return result


PUBLIC = SIGNING_KEY.public_key()


def flip_hex(text: str, at: int = 0) -> str:
    return text[:at] + ("1" if text[at] != "1" else "2") + text[at + 1:]


def test_every_entry_has_a_checkable_inclusion_proof(db: Path) -> None:
    checkpoint = grow(db, 0, 13)
    assert checkpoint["tree_size"] == 13 and check_checkpoint(checkpoint, public_key=PUBLIC)
    assert not check_checkpoint(checkpoint)  # the key it carries proves nothing by itself
    assert check_checkpoint(checkpoint, trust_embedded_key=True)
    for seq in range(13):
        proof = roundtrip(prove_inclusion(db, seq))
        assert proof["index"] == seq and proof["root_hash"] == checkpoint["root_hash"]
        assert check_inclusion(proof, public_key=PUBLIC)
        assert check_inclusion(proof, trust_embedded_key=True) and not check_inclusion(proof)


def test_inclusion_against_an_older_checkpoint(db: Path) -> None:
    grow(db, 0, 13)
    proof = prove_inclusion(db, 2, checkpoint_size=8)
    assert proof["tree_size"] == 8 and check_inclusion(roundtrip(proof), public_key=PUBLIC)
    with pytest.raises(AuditError, match="not covered"):
        prove_inclusion(db, 9, checkpoint_size=8)
    with pytest.raises(AuditError, match="no checkpoint of tree size 7"):
        prove_inclusion(db, 2, checkpoint_size=7)


TAMPERS = {
    "path": lambda p: p["audit_path"].__setitem__(1, flip_hex(p["audit_path"][1], 5)),
    "path_dropped": lambda p: p["audit_path"].pop(),
    "leaf": lambda p: p.__setitem__("leaf_hash", flip_hex(p["leaf_hash"])),
    "index": lambda p: p.__setitem__("index", p["index"] + 1),
    "size": lambda p: p.__setitem__("tree_size", p["tree_size"] + 1),
    "root": lambda p: p.__setitem__("root_hash", flip_hex(p["root_hash"], 9)),
    "body": lambda p: p["entry"].__setitem__("body", p["entry"]["body"].replace("d5", "d6")),
    "mac": lambda p: p["entry"].__setitem__("mac", flip_hex(p["entry"]["mac"], 3)),
    "signature": lambda p: p["checkpoint"].__setitem__(
        "signature", flip_hex(p["checkpoint"]["signature"], 4)),
    "checkpoint_root": lambda p: p["checkpoint"].__setitem__(
        "root_hash", flip_hex(p["checkpoint"]["root_hash"])),
    "public_key": lambda p: p["checkpoint"].__setitem__("public_key", "00" * 32),
    "garbage": lambda p: p.__setitem__("audit_path", ["zz"]),
    "missing": lambda p: p.pop("checkpoint"),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_a_tampered_inclusion_proof_fails(db: Path, tamper: str) -> None:
    grow(db, 0, 13)
    proof = roundtrip(prove_inclusion(db, 5))
    assert check_inclusion(proof, public_key=PUBLIC)
    bad = copy.deepcopy(proof)
    TAMPERS[tamper](bad)
    assert not check_inclusion(bad, trust_embedded_key=True)
    # a pinned key ignores the key the proof carries: swapping that one changes nothing
    assert check_inclusion(bad, public_key=PUBLIC) is (tamper == "public_key")


def test_a_proof_signed_by_another_key_fails_when_pinned(db: Path) -> None:
    grow(db, 0, 6)
    proof = roundtrip(prove_inclusion(db, 1))
    stranger = Ed25519PrivateKey.generate().public_key()
    assert check_inclusion(proof, public_key=PUBLIC)
    assert not check_inclusion(proof, public_key=stranger)
    checkpoint = proof["checkpoint"]
    assert not check_checkpoint(checkpoint, public_key=stranger)
    assert not check_checkpoint({**checkpoint, "tree_size": 5}, public_key=PUBLIC)


def test_consistency_across_reopens(db: Path) -> None:
    held = [grow(db, 0, 5), grow(db, 5, 9), grow(db, 9, 22)]
    for old in held:
        for new in held:
            if old["tree_size"] > new["tree_size"]:
                continue
            proof = roundtrip(prove_consistency(db, old["tree_size"], new["tree_size"]))
            assert check_consistency(proof, old["root_hash"], new["root_hash"])
            assert proof["new_checkpoint"]["root_hash"] == new["root_hash"]
    latest = prove_consistency(db, 5)
    assert latest["new_size"] == 22 and check_consistency(latest, held[0]["root_hash"],
                                                          held[2]["root_hash"])


def test_a_tampered_consistency_proof_fails(db: Path) -> None:
    old, new = grow(db, 0, 7), grow(db, 7, 19)
    proof = roundtrip(prove_consistency(db, 7, 19))
    assert check_consistency(proof, old["root_hash"], new["root_hash"])
    for n in range(len(proof["proof"])):
        bad = copy.deepcopy(proof)
        bad["proof"][n] = flip_hex(bad["proof"][n], 7)
        assert not check_consistency(bad, old["root_hash"], new["root_hash"])
    assert not check_consistency(proof, flip_hex(old["root_hash"]), new["root_hash"])
    assert not check_consistency(proof, old["root_hash"], flip_hex(new["root_hash"]))
    assert not check_consistency({**proof, "old_size": 6}, old["root_hash"], new["root_hash"])
    assert not check_consistency({**proof, "proof": "nope"}, old["root_hash"], new["root_hash"])


def test_a_rewritten_history_is_not_consistent(tmp_path: Path) -> None:
    """A log rebuilt with one different early entry cannot prove the old checkpoint."""
    honest, forked = tmp_path / "a.db", tmp_path / "b.db"
    old = grow(honest, 0, 8)
    grow(forked, 0, 3)
    with AuditLog.open(forked, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True,
                       checkpoint_every=4) as log:
        log.append(event(3, note="rewritten"))
        for i in range(4, 16):
            log.append(event(i))
    new = latest_checkpoint(forked)
    assert new is not None
    proof = prove_consistency(forked, 8, 16)
    assert not check_consistency(proof, old["root_hash"], new["root_hash"])


def test_no_checkpoint_yet(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY).close()
    assert latest_checkpoint(db) is None
    with pytest.raises(AuditError, match="no checkpoint"):
        prove_inclusion(db, 0)
    with pytest.raises(AuditError, match="cannot prove"):
        prove_consistency(db, 0, 3)
