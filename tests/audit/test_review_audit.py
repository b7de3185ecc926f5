"""Review of the audit log's tamper evidence (all eight findings fixed): each test asserts the
correct behaviour: events that hold text or numbers JSON cannot carry, a second writer, forged
consistency proofs, a truncated tail, colliding digests and a corrupted checkpoint."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from audit_support import MAC_KEY, SIGNING_KEY, build, event, pay

import bastion
from bastion.audit import (
    AuditLog,
    check_checkpoint,
    check_consistency,
    latest_checkpoint,
    read_events,
    verify,
    verify_tail,
)
from bastion.kernel._approvals import action_digest

BASTION = Path(sys.executable).with_name("bastion")

ALLOW_PAY = """\
version: 1
name: review-audit
default: deny
rules:
  - id: small-payments
    tools: [pay]
    when: "args.amount < 100.0"
    effect: allow
"""


# 1 -------------------------------------------------------------------------------------------
def test_allowed_decision_with_unencodable_flat_arg_keeps_its_event(db: Path) -> None:
    log = AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True)
    with bastion.Kernel.from_text(ALLOW_PAY, audit=log) as kernel:
        # flat args skip the snapshot, so the writer's canonical_json meets the raw value
        decision = kernel.evaluate(pay({"amount": 5.0, "memo": "\ud800"}))
    [entry] = list(read_events(db))
    assert verify(db, key=MAC_KEY).ok
    # durable audit: an allowed decision must have its own event (id, tool, agent, effect), or
    # be denied when that event cannot be written
    assert not decision.allowed or (entry["kind"], entry["id"], entry.get("effect")) == (
        "decision", decision.id, "allow"), (decision.effect, entry)


# 2 -------------------------------------------------------------------------------------------
def test_malformed_fallback_entry_is_always_encodable(db: Path) -> None:
    log = AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, checkpoint_every=1000)
    log.append(event(0))
    log.append({"kind": "session.end", "id": "session:\ud800:1", "ts": 1})  # caller's session id
    log.append(event(2))
    with contextlib.suppress(bastion.AuditError):
        log.close()
    stats = log.stats
    # the lone surrogate is recorded escaped ({"$str": ...}): nothing is malformed or lost
    assert (log.healthy, stats.written, stats.failed, stats.malformed) == (True, 3, 0, 0), stats
    assert [e["id"] for e in read_events(db)][1] == {"$str": "session:\\ud800:1"}


# 3 -------------------------------------------------------------------------------------------
def test_second_writer_does_not_make_an_untouched_log_unverifiable(db: Path) -> None:
    first = AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True)
    for i in range(3):
        first.append(event(i))
    # e.g. `bastion kill --audit audit.db` while the server's kernel holds the log
    second = AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True)
    for i in range(3, 5):
        first.append(event(i))
    first.close()
    assert verify(db, key=MAC_KEY).ok
    second.close()  # wrote no entry
    report = verify(db, key=MAC_KEY)
    assert report.ok, report


# 4 -------------------------------------------------------------------------------------------
def test_consistency_proof_from_size_zero_cannot_join_unrelated_roots(tmp_path: Path) -> None:
    old_db, new_db = tmp_path / "old.db", tmp_path / "rewritten.db"
    build(old_db, range(10))
    build(new_db, range(100, 120))  # a different history
    old, new = latest_checkpoint(old_db), latest_checkpoint(new_db)
    assert old is not None and new is not None
    pinned = SIGNING_KEY.public_key()
    assert check_checkpoint(old, public_key=pinned) and check_checkpoint(new, public_key=pinned)
    forged = {"type": "consistency", "old_size": 0, "new_size": new["tree_size"], "proof": []}
    assert not check_consistency(forged, old["root_hash"], new["root_hash"])


# 5 -------------------------------------------------------------------------------------------
def test_verify_tail_notices_entries_it_already_verified_are_gone(db: Path) -> None:
    build(db, range(20))
    macs = [e["mac"] for e in read_events(db)]
    assert verify_tail(db, since_seq=20, prev_mac=macs[19], key=MAC_KEY).ok  # caught up
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("DELETE FROM entries WHERE seq >= 15")
    raw.close()
    report = verify_tail(db, since_seq=20, prev_mac=macs[19], key=MAC_KEY)
    assert not report.ok and report.first_bad_seq == 15, report


# 6 -------------------------------------------------------------------------------------------
def test_nested_non_finite_argument_is_not_recorded_as_null(db: Path) -> None:
    log = AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True)
    with bastion.Kernel.from_text(ALLOW_PAY, audit=log) as kernel:
        decision = kernel.evaluate(pay({"amount": 5.0, "fees": [float("inf")]}))
        other = kernel.evaluate(pay({"amount": 5.0, "fees": [None]}))
    assert decision.allowed and other.allowed
    first, second = list(read_events(db))
    assert first["args"]["fees"] != [None], first["args"]
    assert first["action"] != second["action"]


# 7 -------------------------------------------------------------------------------------------
def test_distinct_arguments_have_distinct_action_digests() -> None:
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"n": 2**70}, {"n": {"$bigint": str(2**70)}}),
        ({"n": b"\x01"}, {"n": {"$bytes": "01"}}),
        ({"n": frozenset({1, 2})}, {"n": [1, 2]}),
        ({"n": frozenset({float("nan")})}, {"n": [None]}),
    ]
    collisions = [(a, b) for a, b in pairs if action_digest(pay(a)) == action_digest(pay(b))]
    assert collisions == []


# 8 -------------------------------------------------------------------------------------------
def test_audit_prove_on_a_corrupted_log_is_a_precise_error(db: Path) -> None:
    build(db, range(10))
    (db.parent / "audit.db.key").write_text(MAC_KEY.hex() + "\n")
    (db.parent / "audit.db.key").chmod(0o600)
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("UPDATE checkpoints SET body = 'garbage' WHERE id = (SELECT max(id) FROM "
                "checkpoints)")
    raw.close()
    verified = subprocess.run([str(BASTION), "audit", "verify", str(db)], capture_output=True,
                              text=True, timeout=60)
    assert verified.returncode == 1 and "checkpoint 1: malformed" in verified.stderr
    proved = subprocess.run([str(BASTION), "audit", "prove", str(db), "--seq", "1"],
                            capture_output=True, text=True, timeout=60)
    assert proved.returncode == 2 and "Traceback" not in proved.stderr, proved.stderr[-400:]
    assert proved.stderr.startswith(f"{db}: error:"), proved.stderr[-400:]
