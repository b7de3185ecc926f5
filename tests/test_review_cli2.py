"""Second review of the ``bastion`` command line, end to end (the installed console script run as
a subprocess, the way a user runs it). Each test asserts what README.md / DESIGN.md promise and
failed before its fix.

Contract (DESIGN.md "Command line", ``cli.py`` docstring): 0 success/allowed/intact/valid, 1 not
allowed/tampered/failing/not valid, 2 an error in what was given, a message on stderr and never a
traceback; fail closed; no secret printed.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cli_support import POLICY, bastion

DEEP = 5000  # nesting depth past Python's recursion limit for json.loads


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    return tmp_path


def _deep_json(depth: int = DEEP) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


# -- 1. deeply nested JSON in an option: a traceback, and exit 1 ("not allowed") --------------


@pytest.mark.parametrize("option", ["--args", "--result"])
def test_eval_deeply_nested_json_is_an_error_not_a_denial(work: Path, option: str) -> None:
    argv = ["eval", "-p", "policy.yaml", "-t", "transfer", option, _deep_json()]
    if option == "--result":
        argv += ["--stage", "post_tool"]
    proc = bastion(*argv, cwd=work)
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr, \
        proc.stderr[-400:]
    assert proc.returncode == 2, proc.returncode
    assert proc.stderr.startswith(f"{option}:"), proc.stderr[-400:]


def test_token_verify_deeply_nested_args_is_an_error(tmp_path: Path) -> None:
    root = json.loads(bastion("id", "new", "--key", "root.key", cwd=tmp_path).stdout)["did"]
    holder = json.loads(bastion("id", "new", "--key", "h.key", cwd=tmp_path).stdout)["did"]
    token = json.loads(bastion("token", "issue", "--key", "root.key", "--aud", holder, "-s",
                               "tool:read_*", cwd=tmp_path).stdout)["token"]
    proc = bastion("token", "verify", token, "--root", root, "--tool", "read_file", "--args",
                   _deep_json(), cwd=tmp_path)
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr, \
        proc.stderr[-400:]
    assert proc.returncode == 2, proc.returncode


# -- 2. an error in what was given reported as "not allowed" (exit 1) -------------------------


def test_eval_unknown_stage_exits_2(work: Path) -> None:
    proc = bastion("eval", "-p", "policy.yaml", "-t", "transfer", "--stage", "pre_toool",
                   "--args", '{"amount": 5}', cwd=work)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[:300])
    assert "stage" in proc.stderr, proc.stderr


def test_eval_unreachable_state_store_exits_2(work: Path) -> None:
    pytest.importorskip("redis")
    # port 1 on loopback: refused at once, no network
    proc = bastion("eval", "-p", "policy.yaml", "-t", "transfer", "--args", '{"amount": 5}',
                   "--state", "redis://127.0.0.1:1/0", cwd=work)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[:400])
    assert "Traceback" not in proc.stderr


# -- 3. a password in an audit URL is printed --------------------------------------------------


@pytest.mark.parametrize("command", ["eval", "audit-verify"])
def test_audit_url_password_is_not_printed(work: Path, command: str) -> None:
    url = "postgresql://bastion:hunter2-s3cret@127.0.0.1:1/audit"
    if command == "eval":
        proc = bastion("eval", "-p", "policy.yaml", "-t", "transfer", "--args", '{"amount": 5}',
                       "--audit", url, cwd=work)
    else:
        proc = bastion("audit", "verify", url, cwd=work)
    assert proc.returncode == 2, proc
    assert "hunter2-s3cret" not in proc.stderr + proc.stdout, proc.stderr


# -- 4. a mistyped store path silently creates a new, empty store: fail open ------------------


def test_token_verify_with_a_missing_revocation_store_does_not_pass_a_revoked_token(
        tmp_path: Path) -> None:
    root = json.loads(bastion("id", "new", "--key", "root.key", cwd=tmp_path).stdout)["did"]
    holder = json.loads(bastion("id", "new", "--key", "h.key", cwd=tmp_path).stdout)["did"]
    token = json.loads(bastion("token", "issue", "--key", "root.key", "--aud", holder, "-s",
                               "tool:read_*", cwd=tmp_path).stdout)["token"]
    from bastion.mesh import open_mesh_store

    open_mesh_store(tmp_path / "mesh.db").close()  # the store the fleet's guards read
    assert bastion("token", "revoke", token, "--store", "mesh.db", cwd=tmp_path).returncode == 0
    # revoked where no guard reads (a typo) is not revoked: refused, not reported done
    assert bastion("token", "revoke", token, "--store", "mesh.bd", cwd=tmp_path).returncode == 2
    assert bastion("token", "verify", token, "--root", root, "--store", "mesh.db",
                   cwd=tmp_path).returncode == 1
    # one letter off: the revocation list the operator meant is not read
    proc = bastion("token", "verify", token, "--root", root, "--store", "mesh.bd",
                   cwd=tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert not (tmp_path / "mesh.bd").exists()


@pytest.mark.parametrize("command", ["kill", "kills", "approvals"])
def test_kill_commands_refuse_a_state_store_that_does_not_exist(work: Path,
                                                                command: str) -> None:
    if command == "kill":
        proc = bastion("kill", "--state", "fleet-typo.db", "--by", "ops", "--all", cwd=work)
    else:
        proc = bastion(command, "--state", "fleet-typo.db", cwd=work)
    assert proc.returncode == 2, (proc.returncode, proc.stdout)
    assert not (work / "fleet-typo.db").exists()


# -- 5. bastion demo destroys the user's files --------------------------------------------------


def test_demo_keeps_a_policy_and_audit_log_it_did_not_create(work: Path) -> None:
    made = bastion("eval", "-p", "policy.yaml", "-t", "transfer", "--args", '{"amount": 1}',
                   "--audit", "audit.db", cwd=work)
    assert made.returncode == 0, made.stderr
    key = (work / "audit.db.key").read_bytes()
    bastion("demo", "--dir", ".", cwd=work)
    assert (work / "policy.yaml").read_text(encoding="utf-8") == POLICY
    assert (work / "audit.db.key").read_bytes() == key
    conn = sqlite3.connect(work / "audit.db")
    try:
        first = conn.execute("SELECT body FROM entries WHERE seq = 0").fetchone()[0]
    finally:
        conn.close()
    assert json.loads(first)["policy"] == json.loads(made.stdout)["policy"]


# -- 6. bastion test passes expectations that are wrong or malformed ----------------------------


def test_policy_test_errors_expectation_must_be_a_boolean(work: Path) -> None:
    (work / "cases.yaml").write_text(
        "policy: policy.yaml\ncases:\n"
        "  - name: no amount so the condition errors\n"
        "    action: {tool: transfer}\n"
        '    expect: {effect: require_approval, errors: "false"}\n', encoding="utf-8")
    proc = bastion("test", "cases.yaml", cwd=work)
    assert proc.returncode != 0, proc.stdout
    assert "1 passed" not in proc.stdout, proc.stdout


def test_policy_test_args_expectation_is_type_strict(work: Path) -> None:
    (work / "cases.yaml").write_text(
        "policy: policy.yaml\ncases:\n"
        "  - name: flag is true, expectation says 1\n"
        "    action: {tool: send, args: {card: '4111', flag: true}}\n"
        "    expect: {effect: allow, args: {card: '[REDACTED]', flag: 1}}\n", encoding="utf-8")
    proc = bastion("test", "cases.yaml", cwd=work)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout


def test_an_approver_identity_with_control_characters_is_refused(tmp_path: Path) -> None:
    from bastion import ApprovalError, Kernel

    policy = "version: 1\nrules:\n  - {id: big, tools: [pay], effect: require_approval}\n"
    with Kernel.from_text(policy, audit=False, state=str(tmp_path / "s.db")) as kernel:
        pending = kernel.evaluate(bastion_action("pay"))
        assert pending.approval_id
        with pytest.raises(ApprovalError, match="printable"):
            kernel.approve(pending.approval_id, by="ops\napproved by: ceo")
    proc = bastion("approve", pending.approval_id, "--state", "s.db", "--by", "ops\n",
                   cwd=tmp_path)
    assert proc.returncode != 0 and "printable" in proc.stderr, proc.stderr


def bastion_action(tool: str) -> Any:
    from bastion import Action

    return Action(tool=tool, args={}, agent={"id": "a1"}, session={"id": "s1"})
