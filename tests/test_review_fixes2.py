"""Review of the fixes in 7aa4f4b (audit/state) and 6031cf1 (mesh): each test shows a problem
left in, or brought by, those fixes; each failed before its fix."""

from __future__ import annotations

import enum
import json
import os
import sqlite3
import time
import traceback
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import bastion
from bastion._canon import digest, snapshot
from bastion.audit import AuditLog, check_checkpoint, latest_checkpoint, read_events
from bastion.state import SQLiteStore

MAC_KEY = bytes(range(32))
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
NOW = 1_750_000_000.0

ALLOW_PAY = """\
version: 1
name: review-fixes2
default: deny
rules:
  - id: pay
    tools: [pay]
    effect: allow
"""


def _ident(n: int) -> Any:
    from bastion.mesh import Identity

    return Identity.from_seed(bytes(31) + bytes([n]))


# 1 -- fail-open: a credential in the context is recorded in clear ------------------------------

def test_context_credentials_stay_masked_when_the_context_has_a_non_text_key(
        tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    log = AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True)
    with bastion.Kernel.from_text(ALLOW_PAY, audit=log) as kernel:
        for context in ({"password": "hunter2", 1: "x"},
                        {"api_key": "sk-live-123", "\ud800": "y"}):
            d = kernel.evaluate(bastion.Action(tool="pay", args={"a": 1}, stage="pre_tool",
                                               agent={"id": "a"}, session={"id": "s"},
                                               context=context))
            assert d.allowed
    text = orjson.dumps([e.get("context") for e in read_events(db)]).decode()
    assert "hunter2" not in text and "sk-live-123" not in text, text


# 2 -- fail-open: a kill switch set by a process with a stale .gen fd is lost --------------------

def test_flag_set_by_a_process_that_had_the_gen_file_replaced_reaches_the_others(
        tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    agent = SQLiteStore(path)  # running since before the clean-up
    try:
        assert agent.flags() == {}
        os.unlink(path + ".gen")  # a clean-up / restore, as in test_review_audit3 #12
        other = SQLiteStore(path)  # started afterwards: opens a fresh .gen (value 0)
        try:
            other.set_flag("pause:x", "{}")  # .gen -> 1
            assert other.flags() == {"pause:x": "{}"}  # cached at generation 1
            time.sleep(_recheck() + 0.02)  # the agent's next read re-checks the path
            agent.set_flag("kill:all", '{"by": "ops"}')  # bump writes 1 again: no change
            deadline = time.monotonic() + 0.5
            while "kill:all" not in other.flags() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert "kill:all" in other.flags()
        finally:
            other.close()
    finally:
        agent.close()


def _recheck() -> float:
    from bastion.state._store import _Generation

    return float(_Generation.RECHECK_S)


# 3 -- determinism: $map pairs keep insertion order ----------------------------------------------

def test_equal_maps_with_integer_keys_have_one_digest() -> None:
    a, b = {1: "a", 2: "b"}, {2: "b", 1: "a"}
    assert a == b
    assert digest(snapshot({"m": a})) == digest(snapshot({"m": b}))


def test_loop_breaker_counts_reordered_integer_keyed_args_as_one_call() -> None:
    from bastion.kernel._budgets import _call_key

    assert _call_key("pay", {"to": {1: "x", 2: "y"}}) == _call_key("pay", {"to": {2: "y", 1: "x"}})


# 4 -- regression: a call proof over int-keyed args no longer survives a JSON hop ----------------

def test_call_proof_over_integer_keyed_args_verifies_after_json(tmp_path: Path) -> None:
    from bastion.kernel import Action
    from bastion.mesh import TokenGuard, issue_token, open_mesh_store, prove_call

    root, alice = _ident(1), _ident(2)
    store = open_mesh_store(tmp_path / "mesh.db")
    try:
        token = issue_token(root, audience=alice.did, scopes=["tool:read"], now=NOW).encode()
        args = {"rows": {1: "a", 2: "b"}}
        proof = prove_call(alice, token, "read", args, now=NOW)
        received = json.loads(json.dumps(args))  # what the remote kernel gets over the wire
        guard = TokenGuard(roots={root.did}, nonces=store, clock=lambda: NOW)
        action = Action(tool="read", args=received, agent={"id": alice.did},
                        context={"bastion_token": token, "bastion_token_proof": proof})
        assert guard(action, "read", alice.did) is None
    finally:
        store.close()


# 5 -- regression: saga results handed to later steps and compensations are wrapped --------------

def test_saga_compensation_gets_the_result_its_step_returned() -> None:
    from bastion.runtime import SagaLog, SagaRegistry, SagaRunner, Step

    seen: dict[str, list[Any]] = {"results": [], "comp": []}

    def reserve(ctx: Any) -> Any:
        return {"$bytes": "00ff"}  # e.g. a JSON API's reply that uses '$' keys

    def release(ctx: Any, result: Any) -> None:
        seen["comp"].append(result)

    def pay(ctx: Any) -> Any:
        seen["results"].append(dict(ctx.results))
        raise RuntimeError("declined")

    reg = SagaRegistry()
    reg.register("book", [Step("reserve", reserve, release), Step("pay", pay)])
    out = SagaRunner(reg, SagaLog(":memory:"), sleep=lambda s: None).run("book", {}, saga_id="o1")
    assert out.status == "compensated"
    assert seen["results"] == [{"reserve": {"$bytes": "00ff"}}], seen
    assert seen["comp"] == [{"$bytes": "00ff"}], seen


# 6 -- wrong result: NaN still recorded as null ---------------------------------------------------

class _Rate(enum.Enum):
    UNKNOWN = float("nan")


class _Lazy:
    def __canonical__(self) -> float:
        return float("nan")


@pytest.mark.parametrize("value", [_Rate.UNKNOWN, _Lazy()], ids=["enum", "canonical"])
def test_nan_behind_an_enum_or_canonical_hook_is_not_recorded_as_null(value: Any) -> None:
    assert snapshot({"rate": value}) != {"rate": None}


# 7 -- leak: the password is in the StateError's __cause__ ---------------------------------------

def test_postgres_password_is_not_in_the_error_traceback() -> None:
    pytest.importorskip("psycopg")
    from bastion import StateError
    from bastion.mesh import open_mesh_store

    url = "postgresql://app:%zzTopSecret42@127.0.0.1:1/db"  # (the traceback prints the
    with pytest.raises(StateError) as err:  # line of each call: not this one's text)
        open_mesh_store(url)  # fails while parsing the URL: no server contacted
    assert "TopSecret42" not in "".join(traceback.format_exception(err.value))


# 8 -- wrong result: check_checkpoint ignores the log_id field it now carries --------------------

def test_check_checkpoint_refuses_a_log_id_field_that_is_not_the_signed_one(
        tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True,
                       checkpoint_every=2) as log:
        for i in range(2):
            log.append({"kind": "decision", "id": f"d{i}", "ts": i})
    checkpoint = latest_checkpoint(db)
    assert checkpoint is not None and checkpoint["log_id"]
    assert check_checkpoint(checkpoint, public_key=SIGNING_KEY.public_key())
    forged = {**checkpoint, "log_id": "another-log"}
    assert not check_checkpoint(forged, public_key=SIGNING_KEY.public_key())


# 9 -- docs mismatch: the same log gives other evidence after the attester rotates its key ------

def test_an_attestation_counts_the_same_after_its_issuer_rotates_its_key(
        tmp_path: Path) -> None:
    from bastion.mesh import (
        TrustConfig,
        TrustEngine,
        make_attestation,
        open_mesh_store,
        rotation_statement,
    )

    alice, bob = _ident(2), _ident(3)
    store = open_mesh_store(tmp_path / "mesh.db")
    try:
        store.register("issuer", alice.did, now=NOW)
        store.register("subject", bob.did, now=NOW)
        events: list[dict[str, Any]] = [
            {"kind": "decision", "id": f"d-{i}", "ts": int((NOW + i) * 1e9), "agent": "issuer",
             "stage": "pre_tool", "guards": ["capability_token"], "effect": "allow",
             "code": "policy", "rule_ids": ["rest"],
             "context": {"bastion_token": {"$masked": "sha256:00"}}} for i in range(20)]
        att = make_attestation(alice, subject="subject", kind="severe", at=int(NOW) + 100)
        events.append({"kind": "attestation", "id": "att:1", "ts": int((NOW + 100) * 1e9),
                       "agent": "subject", "attestation": att})
        cfg = TrustConfig(min_attester_trust=310)

        def read() -> int:
            engine = TrustEngine(None, verify_log=False, registry=store, config=cfg,
                                 clock=lambda: NOW + 200)
            engine.feed(events)
            return engine.report("subject").severe_drops

        before = read()
        assert before == 1
        store.rotate("issuer", rotation_statement(alice, _ident(9), agent_id="issuer",
                                                  at=int(NOW) + 150), now=NOW + 150)
        assert read() == before  # the same log, read after a routine rotation
    finally:
        store.close()


# pinned: an old log (checkpoints signed before log_id existed) still verifies and resumes ------

def test_log_with_checkpoints_without_log_id_verifies_and_resumes(tmp_path: Path) -> None:
    from bastion._canon import canonical_json
    from bastion.audit import verify

    db = tmp_path / "old.db"
    with AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True,
                       checkpoint_every=3) as log:
        for i in range(6):
            log.append({"kind": "decision", "id": f"d{i}", "ts": i})
    conn = sqlite3.connect(db, isolation_level=None)
    for row_id, body in conn.execute("SELECT id, body FROM checkpoints").fetchall():
        fields = orjson.loads(body)
        fields.pop("log_id")  # as signed before 7aa4f4b
        old = canonical_json(fields)
        conn.execute("UPDATE checkpoints SET body = ?, signature = ? WHERE id = ?",
                     (old, SIGNING_KEY.sign(old).hex(), row_id))
    conn.close()
    assert verify(db, key=MAC_KEY).ok
    with AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True,
                       checkpoint_every=3) as log:
        for i in range(6, 10):
            log.append({"kind": "decision", "id": f"d{i}", "ts": i})
    report = verify(db, key=MAC_KEY, public_key=[SIGNING_KEY.public_key()])
    assert report.ok and report.checkpoints == 4, report
