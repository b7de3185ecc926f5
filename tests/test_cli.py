"""End-to-end tests of the ``bastion`` command, run as a subprocess of the installed console
script. Exit codes (DESIGN.md): 0 valid/allowed/intact, 1 not allowed/tampered/failing, 2 an error
in what was given, with ``PATH:LINE:COL: error: MESSAGE`` on stderr where there is a position."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bastion.audit import check_consistency, check_inclusion
from bastion.audit._keys import load_signing_key

BASTION = Path(sys.executable).with_name("bastion")

POLICY = """\
version: 1
name: cli-test
rules:
  - id: block-drop
    tools: ["drop_*"]
    effect: deny
  - id: big-transfer
    tools: [transfer]
    when: "args.amount > 1000"
    effect: require_approval
  - id: transfers
    tools: [transfer]
    effect: allow
  - id: email
    tools: [send_email]
    when: "host(args.to).endsWith('example.com')"
    effect: allow
  - id: results
    stage: post_tool
    tools: [read_file]
    when: "result.size < 10"
    effect: allow
"""


def bastion(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BASTION), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    return tmp_path


def _decision(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    out = json.loads(lines[0])
    assert isinstance(out, dict)
    for key in ("effect", "allowed", "rule_ids", "errors", "id"):
        assert key in out, (key, out)
    assert out["allowed"] is (out["effect"] == "allow")
    return out


def _located(stderr: str, path: str) -> tuple[int, int, str]:
    """The one ``PATH:LINE:COL: error: MESSAGE`` line of ``stderr`` (warnings aside), parsed."""
    lines = [x for x in stderr.strip().splitlines() if ": warning: " not in x]
    assert len(lines) == 1, stderr
    m = re.match(rf"^{re.escape(path)}:(\d+):(\d+): error: (.+)$", lines[0])
    assert m is not None, stderr
    return int(m.group(1)), int(m.group(2)), m.group(3)


# -- bastion check ----------------------------------------------------------------------------

def test_check_valid_policy(work: Path) -> None:
    proc = bastion("check", "policy.yaml", cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("policy.yaml: ok (5 rules")
    # its one post_tool rule allows read_file's small results only: said, as a warning
    assert proc.stderr.splitlines() == [
        "policy.yaml:18:5: warning: rules decide stage 'post_tool' but none allows every tool "
        "there: what no rule allows is deny by default (add a rule with tools: ['*'] and effect "
        "allow at that stage if that is not meant)"]


def test_check_warns_about_default_allow(work: Path) -> None:
    (work / "open.yaml").write_text("version: 1\ndefault: allow\nrules: []\n", encoding="utf-8")
    proc = bastion("check", "open.yaml", cwd=work)
    assert proc.returncode == 0
    assert proc.stdout.startswith("open.yaml: ok (0 rules")
    assert re.fullmatch(r"open\.yaml:2:10: warning: .+\n", proc.stderr), proc.stderr


BAD_POLICIES: dict[str, tuple[str, int | None, int | None, str]] = {
    # name: (text, line, column, message fragment); the column points at the offending token
    "unknown_key": ("version: 1\nrules:\n  - id: a\n    effect: deny\n    tols: [x]\n",
                    5, 5, "unknown key 'tols' in rule (did you mean 'tools'?)"),
    "unknown_top_key": ("version: 1\nrulez: []\n", 2, 1, "unknown key 'rulez'"),
    "bad_cel_plain": ("version: 1\nrules:\n  - id: a\n    effect: deny\n    when: args.a > > 1\n",
                      5, 20, "in 'when' of rule 'a': Syntax error"),
    "bad_cel_double_quoted": (
        'version: 1\nrules:\n  - id: a\n    effect: deny\n    when: "args.a > > 1"\n',
        5, 21, "in 'when' of rule 'a': Syntax error"),
    "bad_cel_block": (
        "version: 1\nrules:\n  - id: a\n    effect: deny\n    when: |\n"
        "      args.a > 1 &&\n      args.b > > 2\n",
        7, 16, "in 'when' of rule 'a': Syntax error"),
    "undeclared_variable": ("version: 1\nrules:\n  - id: a\n    effect: deny\n    when: foo > 1\n",
                            5, 11, "undeclared reference to 'foo'"),
    "not_bool": ("version: 1\nrules:\n  - id: a\n    effect: deny\n    when: args.a + 1\n",
                 5, 11, "condition must be a bool, not int"),
    "duplicate_id": ("version: 1\nrules:\n  - id: a\n    effect: deny\n  - id: a\n"
                     "    effect: allow\n", 5, 9, "duplicate rule id 'a' (first at line 3)"),
    "bad_yaml": ("version: 1\nrules:\n  - id: a: b\n    effect: deny\n", 3, 10, "invalid yaml"),
    "bad_effect": ("version: 1\nrules:\n  - id: a\n    effect: permit\n", 4, 13,
                   "unknown effect 'permit'"),
    "not_a_mapping": ("- 1\n- 2\n", 1, 1, "must be a mapping"),
}


@pytest.mark.parametrize("name", sorted(BAD_POLICIES))
def test_check_invalid_policy_names_the_position(work: Path, name: str) -> None:
    text, line, column, fragment = BAD_POLICIES[name]
    (work / f"{name}.yaml").write_text(text, encoding="utf-8")
    proc = bastion("check", f"{name}.yaml", cwd=work)
    assert proc.returncode == 2, proc
    got_line, got_col, message = _located(proc.stderr, f"{name}.yaml")
    assert fragment in message, proc.stderr
    assert (got_line, got_col) == (line, column), proc.stderr


def test_check_non_utf8_bytes(work: Path) -> None:
    (work / "latin1.yaml").write_bytes(b'version: 1\nname: "caf\xe9"\nrules: []\n')
    proc = bastion("check", "latin1.yaml", cwd=work)
    assert proc.returncode == 2
    _, _, message = _located(proc.stderr, "latin1.yaml")
    assert "utf-8" in message


def test_check_missing_file_and_directory(work: Path) -> None:
    (work / "adir").mkdir()
    for path, fragment in (("missing.yaml", "file not found"), ("adir", "")):
        proc = bastion("check", path, cwd=work)
        assert proc.returncode == 2, proc
        _, _, message = _located(proc.stderr, path)
        assert fragment in message


def test_check_several_files_one_bad(work: Path) -> None:
    (work / "second.yaml").write_text("version: 1\nrules: []\n", encoding="utf-8")
    (work / "bad.yaml").write_text("version: 2\nrules: []\n", encoding="utf-8")
    proc = bastion("check", "policy.yaml", "bad.yaml", "second.yaml", cwd=work)
    assert proc.returncode == 2
    assert "policy.yaml: ok" in proc.stdout
    assert "second.yaml: ok" in proc.stdout
    line, column, message = _located(proc.stderr, "bad.yaml")
    assert (line, column) == (1, 10)
    assert "unsupported policy version" in message


# -- bastion eval -----------------------------------------------------------------------------

def test_eval_allowed_denied_and_approval(work: Path) -> None:
    proc = bastion("eval", "--policy", "policy.yaml", "--tool", "send_email",
                   "--args", '{"to": "ops@example.com"}', cwd=work)
    assert proc.returncode == 0, proc.stderr
    out = _decision(proc)
    assert (out["effect"], out["rule_ids"], out["errors"]) == ("allow", ["email"], [])

    proc = bastion("eval", "-p", "policy.yaml", "-t", "DROP_TABLE", cwd=work)
    assert proc.returncode == 1
    out = _decision(proc)
    assert (out["effect"], out["rule_ids"], out["tool"]) == ("deny", ["block-drop"], "drop_table")

    proc = bastion("eval", "-p", "policy.yaml", "-t", "transfer", "--args", '{"amount": 5000}',
                   cwd=work)
    assert proc.returncode == 1
    out = _decision(proc)
    assert out["effect"] == "require_approval"
    assert out["rule_ids"] == ["big-transfer"]


def test_eval_records_condition_errors(work: Path) -> None:
    proc = bastion("eval", "-p", "policy.yaml", "-t", "send_email", "--args", '{"to": 3}',
                   cwd=work)
    assert proc.returncode == 1
    out = _decision(proc)
    assert out["effect"] == "deny"
    assert len(out["errors"]) == 1 and "email" in out["errors"][0]


def test_eval_post_tool_result(work: Path) -> None:
    base = ("eval", "-p", "policy.yaml", "-t", "read_file", "--stage", "post_tool")
    proc = bastion(*base, "--result", '{"size": 3}', cwd=work)
    assert proc.returncode == 0, proc.stdout
    assert _decision(proc)["rule_ids"] == ["results"]
    proc = bastion(*base, "--result", '{"size": 30}', cwd=work)
    assert proc.returncode == 1
    assert _decision(proc)["effect"] == "deny"
    proc = bastion(*base, "--result", "[1", cwd=work)
    assert proc.returncode == 2
    assert proc.stderr.startswith("--result:1:3: error: ")


def test_eval_bad_policy_exits_2(work: Path) -> None:
    (work / "bad.yaml").write_text("version: 1\nrules:\n  - id: a\n    effect: maybe\n",
                                   encoding="utf-8")
    proc = bastion("eval", "-p", "bad.yaml", "-t", "x", cwd=work)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert _located(proc.stderr, "bad.yaml")[:2] == (4, 13)
    proc = bastion("eval", "-p", "missing.yaml", "-t", "x", cwd=work)
    assert proc.returncode == 2
    _located(proc.stderr, "missing.yaml")


@pytest.mark.parametrize(("text", "where"), [
    ('{"amount": 5000', "--args:1:16: error: "),
    ('{"amount":\n 5000,}', "--args:2:7: error: "),
    ("[1, 2]", "--args:1:1: error: "),
])
def test_eval_malformed_args_json(work: Path, text: str, where: str) -> None:
    proc = bastion("eval", "-p", "policy.yaml", "-t", "transfer", "--args", text, cwd=work)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(where), proc.stderr


# -- the audit log ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def audit_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose ``audit.db`` holds five decisions appended by ``bastion eval --audit``
    (built once; each test works on a copy)."""
    work = tmp_path_factory.mktemp("audit-template")
    (work / "policy.yaml").write_text(POLICY, encoding="utf-8")
    for tool, args in [("send_email", '{"to": "a@example.com"}'), ("drop_table", "{}"),
                       ("transfer", '{"amount": 5}'), ("transfer", '{"amount": 5000}'),
                       ("send_email", '{"to": "x@evil.test"}')]:
        proc = bastion("eval", "-p", "policy.yaml", "-t", tool, "--args", args,
                       "--audit", "audit.db", cwd=work)
        assert proc.returncode in (0, 1), proc.stderr
    return work


@pytest.fixture
def audited(audit_template: Path, tmp_path: Path) -> Path:
    for item in audit_template.iterdir():
        shutil.copy2(item, tmp_path / item.name)
    return tmp_path


def test_audit_verify_intact_then_tampered(audited: Path) -> None:
    proc = bastion("audit", "verify", "audit.db", cwd=audited)
    assert proc.returncode == 0, proc.stderr
    assert "intact (5 entries" in proc.stdout

    conn = sqlite3.connect(audited / "audit.db", isolation_level=None)
    body = bytearray(conn.execute("SELECT body FROM entries WHERE seq = 2").fetchone()[0])
    at = body.index(b'"amount":5')
    body[at + len(b'"amount":')] = ord("9")
    conn.execute("UPDATE entries SET body = ? WHERE seq = 2", (bytes(body),))
    conn.close()

    proc = bastion("audit", "verify", "audit.db", cwd=audited)
    assert proc.returncode == 1
    assert "entry 2" in proc.stderr
    assert "TAMPERED" in proc.stderr


def test_audit_verify_missing_log(work: Path) -> None:
    proc = bastion("audit", "verify", "missing.db", cwd=work)
    assert proc.returncode == 2
    assert proc.stderr.startswith("missing.db: error: ")


def test_audit_tail_and_export(audited: Path) -> None:
    proc = bastion("audit", "tail", "audit.db", "-n", "2", cwd=audited)
    assert proc.returncode == 0, proc.stderr
    tail = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["seq"] for e in tail] == [3, 4]
    assert [e["tool"] for e in tail] == ["transfer", "send_email"]

    proc = bastion("audit", "export", "audit.db", "--format", "jsonl", cwd=audited)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["seq"] for e in events] == [0, 1, 2, 3, 4]
    assert [e["effect"] for e in events] == ["allow", "deny", "allow", "require_approval",
                                             "deny"]
    assert all(e["kind"] == "decision" and "mac" in e and "prev" in e for e in events)

    proc = bastion("audit", "export", "audit.db", "--format", "csv", cwd=audited)
    assert proc.returncode == 2


def test_audit_prove_inclusion_and_consistency(audited: Path) -> None:
    proc = bastion("audit", "prove", "audit.db", "--seq", "0", cwd=audited)
    assert proc.returncode == 0, proc.stderr
    proof = json.loads(proc.stdout)
    for key in ("index", "tree_size", "leaf_hash", "root_hash", "audit_path", "checkpoint"):
        assert key in proof, key
    assert (proof["index"], proof["tree_size"]) == (0, 5)
    signer = load_signing_key(audited / "audit.db.sign.pem").public_key()
    assert check_inclusion(proof, public_key=signer)

    proc = bastion("audit", "prove", "audit.db", "--old", "1", "--new", "5", cwd=audited)
    assert proc.returncode == 0, proc.stderr
    proof = json.loads(proc.stdout)
    assert (proof["old_size"], proof["new_size"]) == (1, 5)
    assert isinstance(proof["proof"], list)
    assert check_consistency(proof, proof["old_checkpoint"]["root_hash"],
                             proof["new_checkpoint"]["root_hash"])

    proc = bastion("audit", "prove", "audit.db", "--seq", "9", cwd=audited)
    assert proc.returncode == 2


# -- approvals --------------------------------------------------------------------------------

def test_approval_round_trip_is_single_use_and_bound_to_the_action(work: Path) -> None:
    def ask(args: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return bastion("eval", "-p", "policy.yaml", "-t", "transfer", "--args", args,
                       "--state", "state.db", *extra, cwd=work)

    proc = ask('{"amount": 5000}')
    assert proc.returncode == 1
    first = _decision(proc)["approval_id"]
    proc = ask('{"amount": 7000}')
    second = _decision(proc)["approval_id"]
    assert first != second

    proc = bastion("approvals", "--state", "state.db", cwd=work)
    assert proc.returncode == 0, proc.stderr
    listed = {a["id"]: a for a in map(json.loads, proc.stdout.splitlines())}
    assert set(listed) == {first, second}
    assert listed[first]["status"] == "pending" and listed[first]["tool"] == "transfer"

    for approval_id in (first, second):
        proc = bastion("approve", approval_id, "--state", "state.db", "--by", "alice", cwd=work)
        assert proc.returncode == 0, proc.stderr
        assert "granted by alice" in proc.stdout

    proc = ask('{"amount": 5000}', "--approval", first)
    assert proc.returncode == 0, proc.stdout
    out = _decision(proc)
    assert (out["effect"], out["approval_id"]) == ("allow", first)

    proc = ask('{"amount": 5000}', "--approval", first)  # single use
    assert proc.returncode == 1
    assert _decision(proc)["effect"] == "deny"

    proc = ask('{"amount": 9999}', "--approval", second)  # granted, but for another action
    assert proc.returncode == 1
    assert _decision(proc)["effect"] == "deny"

    proc = bastion("eval", "-p", "policy.yaml", "-t", "transfer", "--args", '{"amount": 7000}',
                   "--state", "state.db", "--agent", '{"id": "mallory"}', "--approval", second,
                   cwd=work)  # the same arguments from another agent
    assert proc.returncode == 1


# -- bastion test -----------------------------------------------------------------------------

def test_policy_test_files(work: Path) -> None:
    (work / "ok.yaml").write_text("""\
policy: policy.yaml
cases:
  - name: email to the company
    action: {tool: send_email, args: {to: ops@example.com}}
    expect: allow
  - name: drop denied
    action: {tool: drop_table}
    expect: {effect: deny, rule_ids: [block-drop], code: policy}
  - name: big transfer
    action: {tool: transfer, args: {amount: 5000}}
    expect: require_approval
""", encoding="utf-8")
    proc = bastion("test", "ok.yaml", cwd=work)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "3 passed, 0 failed"

    (work / "failing.yaml").write_text("""\
policy: policy.yaml
cases:
  - name: wrong expectation
    action: {tool: drop_table}
    expect: allow
""", encoding="utf-8")
    proc = bastion("test", "failing.yaml", cwd=work)
    assert proc.returncode == 1
    assert "FAIL failing.yaml:3 wrong expectation" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "0 passed, 1 failed"

    (work / "malformed.yaml").write_text("""\
policy: policy.yaml
cases:
  - name: typo
    actoin: {tool: send_email}
    expect: deny
""", encoding="utf-8")
    proc = bastion("test", "malformed.yaml", cwd=work)
    assert proc.returncode == 2
    assert _located(proc.stderr, "malformed.yaml")[:2] == (4, 5)


# -- bastion demo -----------------------------------------------------------------------------

def test_demo(tmp_path: Path) -> None:
    proc = bastion("demo", "--dir", str(tmp_path / "demo"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "intact" in proc.stdout
    assert "reads like an injection" in proc.stdout and "require_approval" in proc.stdout
    for log in ("audit.db", "flow-audit.db"):
        proc = bastion("audit", "verify", str(tmp_path / "demo" / log), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    again = bastion("demo", "--dir", str(tmp_path / "demo"), cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr  # a rerun starts clean
