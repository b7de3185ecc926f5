"""``bastion id|token|trust`` through typer's runner (the app mounted by bastion.cli)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from bastion.mesh._cli import app

runner = CliRunner()


def _run(*args: str) -> tuple[int, dict[str, object]]:
    result = runner.invoke(app, list(args))
    out = result.stdout.strip().splitlines()
    return result.exit_code, json.loads(out[-1]) if out else {}


def test_id_token_trust_commands(tmp_path: Path) -> None:
    reg = str(tmp_path / "mesh.db")
    code, root = _run("id", "new", "--key", str(tmp_path / "root.key"))
    assert code == 0 and str(root["did"]).startswith("did:key:z6Mk")
    code, alice = _run("id", "new", "--key", str(tmp_path / "a.key"), "--agent", "alice",
                       "--registry", reg, "--role", "payer")
    assert code == 0
    assert _run("id", "show", "--key", str(tmp_path / "a.key"))[1]["did"] == alice["did"]
    code, issued = _run("token", "issue", "--key", str(tmp_path / "root.key"), "--aud",
                        str(alice["did"]), "-s", "tool:read_*", "-s", "tool:pay",
                        "--constraints", '{"tool:pay": {"amount": {"max": 100}}}')
    assert code == 0
    code, child = _run("token", "delegate", str(issued["token"]), "--key",
                       str(tmp_path / "a.key"), "--aud", "bob", "-s", "tool:pay")
    assert code == 0
    verify = ("token", "verify", str(child["token"]), "--root", str(root["did"]), "--store", reg)
    assert _run(*verify, "--tool", "pay", "--args", '{"amount": 5}')[0] == 0
    code, refused = _run(*verify, "--tool", "pay", "--args", '{"amount": 500}')
    assert code == 1 and "exceeds" in str(refused["reason"])
    assert _run("token", "delegate", str(issued["token"]), "--key", str(tmp_path / "a.key"),
                "--aud", "bob", "-s", "tool:*")[0] == 2
    assert _run("token", "revoke", str(issued["token"]), "--store", reg)[0] == 0
    code, gone = _run(*verify)
    assert code == 1 and gone["reason"] == "revoked"
    code, rotated = _run("id", "rotate", "--key", str(tmp_path / "a.key"), "--out",
                         str(tmp_path / "a2.key"), "--agent", "alice", "--registry", reg)
    assert code == 0 and rotated["did"] != alice["did"]

    from bastion.audit import AuditLog

    log = AuditLog.open(str(tmp_path / "audit.db"))
    log.append({"kind": "decision", "id": "d1", "ts": time.time_ns(), "agent": "alice",
                "stage": "pre_tool", "guards": ["capability_token"], "effect": "deny",
                "code": "policy", "rule_ids": ["no-drop"],
                "context": {"bastion_token": {"$masked": "sha256:00"}}})
    log.close()
    code, report = _run("trust", "show", "alice", "--audit", str(tmp_path / "audit.db"))
    assert code == 0 and report["breakdown"][0]["kind"] == "violation"
    assert report["trust"] == 260 and report["tier"] == "probation"


def test_an_unreachable_store_is_a_clean_error_not_a_traceback(tmp_path: Path) -> None:
    dead = "postgresql://nobody@127.0.0.1:1/none"
    for args in (("token", "verify", "bt1.x", "--root", "did:key:z", "--store", dead),
                 ("trust", "show", "a1", "--audit", str(tmp_path / "x.db"), "--registry", dead)):
        if args[0] == "trust":
            (tmp_path / "x.db").write_bytes(b"")
        result = runner.invoke(app, list(args))
        assert result.exit_code == 2, result.output
        assert "cannot open mesh store" in result.output or "error:" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_an_slo_breach_is_recorded_and_costs_trust(tmp_path: Path) -> None:
    audit = str(tmp_path / "audit.db")
    from bastion.audit import AuditLog

    AuditLog.open(audit).close()  # the fleet's log (slo-breach refuses a path that is not one)
    code, out = _run("trust", "slo-breach", "alice", "--audit", audit, "--slo", "p99-latency",
                     "--objective", "0.5", "--observed", "2.5", "--by", "sre-bot")
    assert code == 0 and str(out["recorded"]).startswith("slo:")
    code, report = _run("trust", "show", "alice", "--audit", audit)
    assert code == 0 and [b["kind"] for b in report["breakdown"]] == ["slo_breach"]
    assert report["trust"] < report["prior"]  # below where a new agent starts
    code, _ = _run("trust", "slo-breach", "alice", "--audit", audit, "--slo", "x",
                   "--objective", "nan", "--observed", "1", "--by", "sre-bot")
    assert code == 2
