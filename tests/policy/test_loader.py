"""The strict loader: every mistake is a PolicyError naming path:line:column."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion import PolicyError
from bastion.policy import Effect, Per, Stage, load_policy, parse_policy

GOOD = """\
version: 1
name: payments
rules:
  - id: big
    tools: [transfer]
    when: args.amount > 1000
    effect: require_approval
    message: big transfers need a human
  - id: mail
    tools: ["Send_*"]
    effect: allow
    limit: 10/minute
    per: session
"""


def test_valid_policy_loads_into_frozen_typed_values() -> None:
    p = parse_policy(GOOD, path="p.yaml")
    assert p.name == "payments" and p.default is Effect.DENY
    big, mail = p.rules
    assert big.stage is Stage.PRE_TOOL and big.effect is Effect.REQUIRE_APPROVAL
    assert big.location is not None and (big.location.line, big.location.column) == (4, 5)
    assert mail.tools == ("send_*",)  # globs are canonicalised like tool names
    assert mail.limit is not None and (mail.limit.count, mail.limit.window_s) == (10, 60)
    assert mail.limit.per is Per.SESSION
    with pytest.raises(AttributeError):
        big.id = "other"  # type: ignore[misc]
    assert p.digest.startswith("sha256:")
    assert parse_policy(GOOD).digest == p.digest


@pytest.mark.parametrize(
    ("text", "line", "col", "fragment"),
    [
        ("version: 1\nrules:\n  - id: a\n    efect: deny\n", 4, 5, "unknown key 'efect'"),
        ("version: 1\nrule:\n  - id: a\n", 2, 1, "did you mean 'rules'"),
        ("version: 1\nrules:\n  - {id: a, effect: deny}\n  - {id: a, effect: allow}\n", 4, 10,
         "duplicate rule id 'a'"),
        ("version: 1\nrules:\n  - {id: a, effect: alow}\n", 3, 21, "unknown effect 'alow'"),
        ("version: 1\nrules:\n  - {id: a, effect: deny, stage: pre}\n", 3, 34, "unknown stage"),
        ("version: 1\nrules:\n  - id: a\n    effect: deny\n    when: args.x >\n", 5, 19,
         "syntax error"),
        ("version: 1\nrules:\n  - id: a\n    effect: deny\n    when: \"args.a > > 1\"\n", 5, 21,
         "syntax error"),
        ("version: 1\nrules:\n  - id: a\n    effect: deny\n    when: |\n      args.a > 1 &&\n"
         "      args.b > > 1\n", 7, 16, "syntax error"),
        ("version: 1\nrules:\n  - id: a\n    effect: deny\n    when: nosuch == 1\n", 5, 11,
         "undeclared reference to 'nosuch'"),
        ("version: 1\nrules:\n  - id: a\n    effect: deny\n    when: size(args)\n", 5, 11,
         "must be a bool"),
        ("version: 1\nrules:\n  - id: a\n    effect: deny\n    when: tool == 1\n", 5, 16,
         "no matching overload"),
        ("version: 1\nrules:\n  - {id: a, effect: deny, tools: ['se[nd']}\n", 3, 35,
         "bad tool glob"),
        ("version: 1\nrules:\n  - {id: a, effect: deny, tools: []}\n", 3, 34, "non-empty list"),
        ("version: 1\nrules:\n  - {id: a, effect: allow, limit: lots}\n", 3, 35, "bad limit"),
        ("version: 1\nrules:\n  - {id: a, effect: allow, per: agent}\n", 3, 28, "needs a 'limit'"),
        ("version: 1\nrules:\n  - {id: a, effect: redact}\n", 3, 5, "a redact rule needs"),
        ("version: 1\nrules:\n  - {id: a, effect: deny, redact: [args.x]}\n", 3, 27,
         "only valid with 'effect: redact'"),
        ("version: 1\nrules:\n  - {id: a, effect: redact, redact_pattern: '('}\n", 3, 45,
         "bad redact_pattern"),
        ("version: 1\nrules:\n  - {id: a, effect: redact, redact: [result.x]}\n", 3, 38,
         "starts with 'args'"),
        ("version: 2\nrules: []\n", 1, 10, "unsupported policy version"),
        ("name: x\n", 1, 1, "missing required key 'version'"),
        ("version: 1\nversion: 1\n", 2, 1, "duplicate key 'version'"),
        ("version: 1\nrules: [1\n", 3, 1, "invalid yaml"),
        ("version: 1\nrules: !!python/object:os.system {}\n", 2, 8, "tag"),
        ("version: 1\nx: &a [1]\ny: *a\n", 2, 4, "aliases are not allowed"),
        ("- 1\n- 2\n", 1, 1, "must be a mapping"),
        ("version: 1\nrules:\n  - {id: 'a b', effect: deny}\n", 3, 10, "rule id"),
        ("version: 1\ndefault: redact\n", 2, 10, "default must be"),
        ("version: 1\nbudgets: {session_calls: 0}\n", 2, 26, "positive integer"),
    ],
)
def test_mistakes_are_rejected_with_their_position(text: str, line: int, col: int,
                                                   fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, path="bad.yaml")
    err = info.value
    assert fragment.lower() in err.message.lower()
    assert (err.path, err.line, err.column) == ("bad.yaml", line, col)
    assert str(err).startswith(f"bad.yaml:{line}:{col}: error: ")


def test_missing_file_is_a_policy_error_not_yaml_text(tmp_path: Path) -> None:
    missing = tmp_path / "version: 1"  # a path that would parse as YAML if misread as text
    with pytest.raises(PolicyError) as info:
        load_policy(missing)
    assert "file not found" in info.value.message and info.value.path == str(missing)


def test_non_utf8_file_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_bytes(b"version: 1\nname: \xff\n")
    with pytest.raises(PolicyError, match="not valid utf-8") as info:
        load_policy(f)
    assert (info.value.line, info.value.column) == (2, 7)


def test_huge_file_is_rejected_before_parsing() -> None:
    with pytest.raises(PolicyError, match="larger than"):
        parse_policy("version: 1\n#" + "x" * (5 * 1024 * 1024))


def test_default_allow_loads_with_a_warning() -> None:
    p = parse_policy("version: 1\ndefault: allow\n", path="p.yaml")
    assert p.default is Effect.ALLOW
    assert p.warnings and p.warnings[0].startswith("p.yaml:2:10: warning:")


def test_empty_rules_and_empty_document() -> None:
    assert parse_policy("version: 1\nrules: []\n").rules == ()
    with pytest.raises(PolicyError):
        parse_policy("")
