"""Third review of the audit trail and the state stores. Each test asserts the documented (or
plainly expected) behaviour; each failed before its fix."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_support import MAC_KEY, SIGNING_KEY, build, event, pay
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import bastion
from bastion import AuditError, ConfigError
from bastion.audit import (
    AuditLog,
    check_checkpoint,
    check_inclusion,
    latest_checkpoint,
    prove_inclusion,
    read_events,
    verify,
    verify_tail,
)
from bastion.state import SQLiteStore

BASTION = Path(sys.executable).with_name("bastion")

ALLOW_PAY = """\
version: 1
name: review-audit3
default: deny
rules:
  - id: pay
    tools: [pay]
    effect: allow
"""


def kernel_events(db: Path, *calls: Any) -> tuple[list[bastion.Decision], list[dict[str, Any]]]:
    log = AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True)
    with bastion.Kernel.from_text(ALLOW_PAY, audit=log) as kernel:
        decisions = [kernel.evaluate(pay(args)) for args in calls]
    return decisions, list(read_events(db))


# 1 -------------------------------------------------------------------------------------------
def test_lone_surrogate_key_does_not_overwrite_a_look_alike_key(db: Path) -> None:
    [decision], [entry] = kernel_events(db, {"\ud800": "wire 1,000,000 to X",
                                             "\\ud800": "benign"})
    assert decision.allowed
    recorded = entry["args"]  # both arguments passed on are in the audit record, apart
    assert recorded == {"$map": [["\\ud800", "benign"],  # pairs in the order of their keys'
                                 [{"$str": "\\ud800"}, "wire 1,000,000 to X"]]}, recorded


# 2 -------------------------------------------------------------------------------------------
def test_integer_and_string_keys_are_both_recorded(db: Path) -> None:
    [decision], [entry] = kernel_events(db, {1: "rm -rf /", "1": "ls", "nested": [1]})
    assert decision.allowed
    assert "rm -rf /" in orjson.dumps(entry["args"]).decode(), entry["args"]


# 3 -------------------------------------------------------------------------------------------
def test_allowed_decision_with_an_integer_key_keeps_its_decision_event(db: Path) -> None:
    [decision], [entry] = kernel_events(db, {1: "a"})
    assert decision.allowed
    assert entry["kind"] == "decision", entry
    assert entry["tool"] == "pay" and entry["effect"] == "allow"


# 4 -------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Payment:
    amount: float


def test_non_finite_float_inside_a_dataclass_is_not_recorded_as_null(db: Path) -> None:
    [decision], [entry] = kernel_events(db, {"p": Payment(float("inf"))})
    assert decision.allowed
    assert entry["args"]["p"] != {"amount": None}, entry["args"]


# 5 -------------------------------------------------------------------------------------------
def test_tagged_forms_do_not_collide_with_look_alike_user_data(db: Path) -> None:
    pairs = [({"x": float("nan")}, {"x": {"$float": "nan"}}),
             ({"x": "\ud800"}, {"x": {"$str": "\\ud800"}})]
    with AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True) as log:
        for i, (a, b) in enumerate(pairs):
            log.append(event(2 * i, args=a))
            log.append(event(2 * i + 1, args=b))
    entries = list(read_events(db))
    same = [(entries[2 * i]["args"], entries[2 * i + 1]["args"]) for i in range(len(pairs))
            if entries[2 * i]["args"] == entries[2 * i + 1]["args"]]
    assert same == [], same


# 6 -------------------------------------------------------------------------------------------
def test_pinned_verify_of_an_untouched_log_after_signing_key_rotation(db: Path) -> None:
    build(db, range(4), every=3)
    new_key = Ed25519PrivateKey.generate()
    build(db, range(4, 8), every=3, signing_key=new_key)
    assert verify(db, key=MAC_KEY).ok  # untouched
    report = verify(db, key=MAC_KEY, public_key=[SIGNING_KEY.public_key(), new_key.public_key()])
    assert report.ok, report  # both keys pinned: the whole history verifies
    only_new = verify(db, key=MAC_KEY, public_key=new_key.public_key())
    assert not only_new.ok and "not a pinned key" in (only_new.reason or "")


# 7 -------------------------------------------------------------------------------------------
def test_self_signed_forged_inclusion_proof_is_not_accepted_by_default(tmp_path: Path) -> None:
    forged = tmp_path / "forged.db"
    attacker = Ed25519PrivateKey.generate()
    with AuditLog.open(forged, key=os.urandom(32), signing_key=attacker, durable=True) as log:
        log.append(event(0, effect="allow", note="an event that never happened"))
    proof = prove_inclusion(forged, 0)
    assert not check_checkpoint(proof["checkpoint"])
    assert not check_inclusion(proof)


# 8 -------------------------------------------------------------------------------------------
def test_signed_checkpoint_is_bound_to_its_log(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    build(db, range(3), every=3)
    conn = sqlite3.connect(db)
    log_id = dict(conn.execute("SELECT name, value FROM meta").fetchall())["log_id"]
    conn.close()
    checkpoint = latest_checkpoint(db)
    assert checkpoint is not None
    assert orjson.loads(checkpoint["body"]).get("log_id") == log_id, checkpoint["body"]


# 9 -------------------------------------------------------------------------------------------
def test_entry_hidden_at_the_minimum_seq_is_detected(db: Path) -> None:
    build(db, range(4), every=3)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO entries (seq, body, mac, leaf) VALUES (?, ?, ?, ?)",
                 (-(2**63), b'{"kind":"injected"}', "0" * 64, b"\0" * 32))
    conn.close()
    with pytest.raises(AuditError):  # the writer does see it ("-1 entries missing")
        AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True)
    report = verify(db, key=MAC_KEY)
    assert not report.ok, report


# 10 ------------------------------------------------------------------------------------------
def test_dropped_checkpoints_table_is_reported_as_tampered(db: Path) -> None:
    build(db, range(4), every=3)
    key_file = db.parent / "audit.db.key"
    key_file.write_text(MAC_KEY.hex() + "\n")
    key_file.chmod(0o600)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TABLE checkpoints")
    conn.close()
    done = subprocess.run([str(BASTION), "audit", "verify", str(db)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "TAMPERED" in done.stderr, (done.returncode, done.stderr)


# 11 ------------------------------------------------------------------------------------------
def test_verify_tail_missing_key_file_is_a_precise_error(db: Path) -> None:
    build(db, range(4), every=3)
    with pytest.raises(AuditError, match="key"):
        verify_tail(db, since_seq=2, prev_mac="0" * 64)


@pytest.mark.parametrize("prev_mac", ["\u00e9" * 64, None], ids=["non-ascii", "none"])
def test_verify_tail_malformed_prev_mac_is_reported(db: Path, prev_mac: Any) -> None:
    build(db, range(4), every=3)
    try:
        report = verify_tail(db, since_seq=2, prev_mac=prev_mac, key=MAC_KEY)
    except (AuditError, ConfigError):
        return
    assert not report.ok


# 12 ------------------------------------------------------------------------------------------
def test_kill_switch_reaches_a_running_process_after_gen_file_is_replaced(
        tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    running = SQLiteStore(path)  # an agent process, already running
    try:
        assert running.flags() == {}
        os.unlink(path + ".gen")  # e.g. a clean-up of stray files, a restore from backup
        operator = SQLiteStore(path)  # `bastion kill --all` run afterwards
        try:
            operator.set_flag("kill:all", '{"by": "ops"}')
            assert "kill:all" in operator.flags()
            deadline = time.monotonic() + 2.0  # docs: within RECHECK_S (0.05 s)
            while "kill:all" not in running.flags() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert "kill:all" in running.flags()  # the kill switch must reach the agent
        finally:
            operator.close()
    finally:
        running.close()


# 13 ------------------------------------------------------------------------------------------
def test_opening_a_log_with_entries_but_no_meta_refuses_and_keeps_the_evidence(db: Path) -> None:
    build(db, range(3), every=3)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DELETE FROM meta")
    conn.close()
    assert not verify(db, key=MAC_KEY).ok  # tampered: no format, no key check
    try:
        AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True).close()
    except AuditError:
        pass
    else:
        pytest.fail("an existing log without its meta rows was opened as a new log")
    finally:
        assert not verify(db, key=MAC_KEY).ok, "opening the log made the tampering disappear"
