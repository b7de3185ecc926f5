"""The policy conformance corpus: every ``tests/conformance/*.yaml`` file, one test per case.

Each corpus file is a ``bastion test`` file (see ``bastion._policytest``): a policy plus cases of
action → expected decision, with expectations taken from DESIGN.md. A file is run once (its cases
share one kernel, in order) and each case becomes its own pytest test, so a failure names the file
and the case. The same corpus is also run through the ``bastion test`` command line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from bastion import PolicyError
from bastion._policytest import CaseResult, run_file

CORPUS = Path(__file__).parent / "conformance"
FILES = sorted(CORPUS.glob("*.yaml"))
MIN_CASES = 150


def _case_names(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [str(case.get("name", f"#{i}")) for i, case in enumerate(doc.get("cases") or [])]


CASES = [(path, name) for path in FILES for name in _case_names(path)]


@cache
def _results(path: Path) -> dict[str, CaseResult]:
    return {r.name: r for r in run_file(path)}


@pytest.mark.parametrize(
    ("path", "name"), CASES, ids=[f"{path.stem}::{name}" for path, name in CASES]
)
def test_case(path: Path, name: str) -> None:
    result = _results(path)[name]
    assert result.passed, (
        f"{path.name}:{result.line} {name}: "
        + "; ".join(result.problems)
        + f"\n  decision: {result.decision!r}"
    )


def test_corpus_is_large_enough() -> None:
    assert len(FILES) >= 10
    assert len(CASES) >= MIN_CASES, f"only {len(CASES)} cases in {CORPUS}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_file_is_well_formed(path: Path) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert "description" in doc, "every corpus file says what it covers"
    names = _case_names(path)
    assert all(isinstance(c.get("name"), str) and c["name"] for c in doc["cases"])
    assert len(names) == len(set(names)), "case names must be unique within a file"
    assert len(run_file(path)) == len(names)


def _bastion() -> str:
    exe = Path(sys.executable).parent / "bastion"
    assert exe.exists(), f"the bastion command is not installed next to {sys.executable}"
    return str(exe)


def test_cli_runs_the_whole_corpus() -> None:
    proc = subprocess.run(
        [_bastion(), "test", *map(str, FILES)], capture_output=True, text=True, timeout=300
    )
    m = re.search(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.MULTILINE)
    assert m is not None, proc.stdout + proc.stderr
    assert (int(m.group(1)), int(m.group(2))) == (len(CASES), 0), proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- malformed test files are errors with a position, never silently skipped ---------------------

_GOOD_POLICY = """\
policy_text: |
  version: 1
  rules:
    - id: allow-all
      effect: allow
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "case.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def _error(tmp_path: Path, text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        run_file(_write(tmp_path, text))
    return info.value


def test_well_formed_minimal_file_runs(tmp_path: Path) -> None:
    results = run_file(
        _write(
            tmp_path,
            _GOOD_POLICY + "cases:\n  - name: ok\n    action: {tool: x}\n    expect: allow\n",
        )
    )
    assert [(r.name, r.passed) for r in results] == [("ok", True)]


def test_wrong_expectation_is_a_failure_not_an_error(tmp_path: Path) -> None:
    results = run_file(
        _write(
            tmp_path,
            _GOOD_POLICY + "cases:\n  - name: wrong\n    action: {tool: x}\n    expect: deny\n",
        )
    )
    assert not results[0].passed
    assert "effect" in results[0].problems[0]


def test_unknown_key_in_case(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        _GOOD_POLICY + "cases:\n  - name: c\n    action: {tool: x}\n"
        "    expect: allow\n    expected: deny\n",
    )
    assert (err.line, err.column) == (10, 5)
    assert "expected" in err.message


def test_unknown_key_in_action(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        _GOOD_POLICY + "cases:\n  - name: c\n    action: {tool: x, tools: y}\n    expect: allow\n",
    )
    assert err.line == 8


def test_unknown_key_in_expect(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        _GOOD_POLICY + "cases:\n  - name: c\n    action: {tool: x}\n"
        "    expect: {effect: allow, rule_id: [allow-all]}\n",
    )
    assert err.line == 9


def test_unknown_top_level_key(tmp_path: Path) -> None:
    err = _error(tmp_path, _GOOD_POLICY + "case:\n  - name: c\n")
    assert err.line == 6


def test_bad_policy_text_points_into_the_test_file(tmp_path: Path) -> None:
    text = (
        "description: bad effect\n"
        "policy_text: |\n"
        "  version: 1\n"
        "  rules:\n"
        "    - id: r\n"
        "      effect: permit\n"
        "cases:\n  - name: c\n    action: {tool: x}\n    expect: allow\n"
    )
    err = _error(tmp_path, text)
    assert err.path == str(tmp_path / "case.yaml")
    assert err.line == 6
    assert "permit" in err.message


def test_bad_cel_in_policy_text_points_into_the_test_file(tmp_path: Path) -> None:
    text = (
        "policy_text: |\n"
        "  version: 1\n"
        "  rules:\n"
        "    - id: r\n"
        "      effect: deny\n"
        '      when: "args.amount >"\n'
        "cases:\n  - name: c\n    action: {tool: x}\n    expect: deny\n"
    )
    err = _error(tmp_path, text)
    assert err.line == 6


def test_invalid_yaml_in_test_file(tmp_path: Path) -> None:
    err = _error(tmp_path, _GOOD_POLICY + "cases:\n  - name: c\n    action: {tool: x\n")
    assert err.line > 0


def test_missing_cases(tmp_path: Path) -> None:
    err = _error(tmp_path, _GOOD_POLICY)
    assert "cases" in err.message
    assert err.line > 0


def test_missing_expect(tmp_path: Path) -> None:
    err = _error(tmp_path, _GOOD_POLICY + "cases:\n  - name: c\n    action: {tool: x}\n")
    assert err.line == 7


def test_bad_repeat(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        _GOOD_POLICY + "cases:\n  - name: c\n    action: {tool: x}\n"
        "    expect: allow\n    repeat: 0\n",
    )
    assert err.line == 7


def test_policy_and_policy_text_together(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        "policy: other.yaml\n"
        + _GOOD_POLICY
        + "cases:\n  - name: c\n    action: {tool: x}\n    expect: allow\n",
    )
    assert err.line > 0


def test_missing_policy_file(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        "policy: nowhere.yaml\ncases:\n  - name: c\n    action: {tool: x}\n    expect: allow\n",
    )
    assert "nowhere.yaml" in err.path


def test_cli_reports_a_malformed_file_with_exit_code_2(tmp_path: Path) -> None:
    bad = _write(
        tmp_path,
        _GOOD_POLICY + "cases:\n  - name: c\n    action: {tool: x}\n"
        "    expect: allow\n    expected: deny\n",
    )
    proc = subprocess.run(
        [_bastion(), "test", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert f"{bad}:10:5: error:" in proc.stderr
