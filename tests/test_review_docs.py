"""A review that ran every example of README.md and docs/flow.md and the cases a user would try
next. Each test is one finding, fixed: the README's quick start and policy-test examples (which
named a tool the policy does not govern); ``bastion check``/``bastion test`` reading Cedar files;
argument values CEL has no type for (they made every condition err); bare ``dyn`` conditions;
``host()`` and IDNA/``mailto:`` lists; expired approvals listed as pending; the canonical tool
name on early denials; private database files; a warning for ``default: allow``; ``sqlite:///``
URLs in the audit CLI; elevations without an audit log; Cedar errors naming rules; ``limit`` on
a deny rule."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import re
import stat
import subprocess
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest

import bastion
from bastion import Action, ConfigError, Kernel, PolicyError, PolicyWarning
from bastion.flow import parse_catalog
from bastion.policy._cel import host
from bastion.runtime import KillSwitch, RingGuard
from bastion.state import open_store

ROOT = Path(__file__).resolve().parents[1]
BASTION = Path(sys.executable).with_name("bastion")
CEDAR = """\
@id("no-big")
forbid(principal, action, resource) when { context.args.amount > 100 };
@id("reads")
permit(principal, action == Action::"read_file", resource);
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BASTION), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _readme_policy() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The policy file", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


# -- the README's own examples ------------------------------------------------------------------

def test_the_quick_start_evaluation_gives_what_the_readme_says() -> None:
    with Kernel.from_text(_readme_policy(), audit=False) as kernel:
        d = kernel.evaluate(Action(tool="pay_invoice", args={"amount": 5000},
                                   agent={"id": "a1"}))
    assert (d.effect, d.rule_ids) == ("require_approval", ("large-payments",))


def test_the_readme_policy_test_example_passes(tmp_path: Path) -> None:
    (tmp_path / "payments.yaml").write_text(_readme_policy(), encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(policy: payments\.yaml.*?)```", readme, re.S)
    assert example is not None
    (tmp_path / "t.yaml").write_text(example.group(1), encoding="utf-8")
    proc = _cli("test", "t.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- Cedar in the CLI ---------------------------------------------------------------------------

def test_check_and_test_read_cedar_files(tmp_path: Path) -> None:
    (tmp_path / "p.cedar").write_text(CEDAR, encoding="utf-8")
    proc = _cli("check", "p.cedar", cwd=tmp_path)
    assert proc.returncode == 0 and "2 cedar policies" in proc.stdout, proc.stderr
    (tmp_path / "t.yaml").write_text(
        "policy: p.cedar\ncases:\n"
        "  - {name: read, action: {tool: read_file, args: {amount: 1}},"
        " expect: {effect: allow, rule_ids: [reads]}}\n"
        "  - {name: big, action: {tool: read_file, args: {amount: 500}},"
        " expect: {effect: deny, rule_ids: [no-big]}}\n", encoding="utf-8")
    proc = _cli("test", "t.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "bad.cedar").write_text("permit(principal, action, resource) when { nope };",
                                        encoding="utf-8")
    proc = _cli("check", "bad.cedar", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("bad.cedar:1:"), proc.stderr


def test_cedar_errors_name_the_policy_by_its_id() -> None:
    with Kernel.from_text(CEDAR, format="cedar", audit=False) as kernel:
        d = kernel.evaluate(Action(tool="read_file", args={}))
    assert d.effect == "deny" and d.rule_ids == ("no-big",)
    assert any("'no-big'" in e for e in d.errors), d.errors


# -- argument values CEL has no type for ---------------------------------------------------------

@dataclasses.dataclass
class _User:
    name: str
    age: int


ODD_VALUES = [_User("ann", 3), datetime.datetime(2024, 1, 2, 3, 4), datetime.date(2024, 1, 2),
              decimal.Decimal("19.99"), uuid.UUID(int=7), "x\ud800y", Path("/tmp/x"),
              {1, 2}, (1, 2), bytearray(b"ab")]
GUARDED = """\
version: 1
rules:
  - {id: to-ops, when: 'args.to == "ops"', effect: allow}
  - {id: big, when: 'has(args.amount) && args.amount > 1000', effect: deny}
  - {id: adult, when: 'has(args.user) && args.user.age >= 18', effect: deny}
"""


@pytest.mark.parametrize("value", ODD_VALUES, ids=lambda v: type(v).__name__)
def test_an_odd_argument_does_not_break_conditions_that_do_not_read_it(value: Any) -> None:
    with Kernel.from_text(GUARDED, audit=False) as kernel:
        d = kernel.evaluate(Action(tool="t", args={"to": "ops", "extra": value}))
    assert d.effect == "allow", (d.errors, d.reasons)


@pytest.mark.parametrize(("amount", "effect", "erred"), [
    (decimal.Decimal("1000.01"), "deny", False),
    (decimal.Decimal("999.99"), "allow", False),
    (decimal.Decimal("1000.0000000000000001"), "deny", True),  # no float reads back as it
    (decimal.Decimal("NaN"), "deny", True),
    (2**70, "deny", True),  # an overflow is an error (DESIGN.md) for every rule reading args
])
def test_decimal_and_huge_amounts_are_compared_exactly_or_fail_closed(
        amount: Any, effect: str, erred: bool) -> None:
    with Kernel.from_text(GUARDED, audit=False) as kernel:
        d = kernel.evaluate(Action(tool="t", args={"to": "ops", "amount": amount}))
    assert d.effect == effect and bool(d.errors) is erred, (d.errors, d.reasons)


def test_a_dataclass_argument_is_read_by_its_fields() -> None:
    with Kernel.from_text(GUARDED, audit=False) as kernel:
        d = kernel.evaluate(Action(tool="t", args={"to": "ops", "user": _User("ann", 40)}))
        assert d.effect == "deny" and d.rule_ids == ("adult",)
        d = kernel.evaluate(Action(tool="t", args={"to": "ops", "user": _User("bo", 4)}))
        assert d.effect == "allow"


# -- dyn conditions ------------------------------------------------------------------------------

@pytest.mark.parametrize(("flag", "effect"), [(True, "allow"), (False, "deny"), ("yes", "deny"),
                                              (1, "deny"), (None, "deny")])
def test_a_bare_dyn_condition_loads_and_fails_closed_on_a_non_bool(flag: Any,
                                                                   effect: str) -> None:
    policy = "version: 1\nrules:\n  - {id: flag, when: args.flag, effect: allow}\n"
    with Kernel.from_text(policy, audit=False) as kernel:
        d = kernel.evaluate(Action(tool="t", args={"flag": flag}))
    assert d.effect == effect
    if type(flag) is not bool:
        assert any("not a bool" in e for e in d.errors), d.errors


def test_tool_info_declared_is_a_condition_of_its_own() -> None:
    catalog = parse_catalog("version: 1\ntools:\n  t: {class: write, sinks: [a]}\n")
    policy = ("version: 1\nrules:\n  - {id: d, when: tool_info.declared, effect: allow}\n")
    with Kernel.from_text(policy, audit=False, catalog=catalog) as kernel:
        assert kernel.evaluate(Action(tool="t", args={})).effect == "allow"
        assert kernel.evaluate(Action(tool="other", args={})).effect == "deny"


# -- host() ------------------------------------------------------------------------------------

def test_host_reads_both_spellings_of_an_idn_host_as_one() -> None:
    assert host("ops@банк.рф") == host("ops@xn--80ab2al.xn--p1ai") == "банк.рф"
    assert host("https://XN--80AB2AL.xn--p1ai/pay") == "банк.рф"
    assert host("https://xn--zz.example/") == "xn--zz.example"  # no valid IDNA: as written


def test_host_of_a_mailto_with_more_recipients_is_no_host() -> None:
    assert host("mailto:ops@example.com?cc=x@evil.test") == ""
    assert host("mailto:ops@example.com?subject=hi") == "example.com"


# -- approvals, early denials, files, warnings ----------------------------------------------------

def test_an_expired_approval_is_not_listed_as_pending() -> None:
    now = [1_000 * 10**9]
    policy = "version: 1\nrules:\n  - {id: ask, effect: require_approval}\n"
    with Kernel.from_text(policy, audit=False, approval_ttl_s=60,
                          clock=lambda: now[0]) as kernel:
        d = kernel.evaluate(Action(tool="t"))
        assert [a.id for a in kernel.pending_approvals()] == [d.approval_id]
        now[0] += 61 * 10**9
        assert kernel.pending_approvals() == []


def test_an_early_deny_names_the_canonical_tool() -> None:
    with Kernel.from_text("version: 1\nrules:\n  - {id: a, effect: allow}\n",
                          audit=False) as kernel:
        KillSwitch(kernel.state).engage(tool="send_email", by="ops", reason="incident")
        d = kernel.evaluate(Action(tool="SEND_EMAIL"))
        assert (d.code, d.tool) == ("kill_switch", "send_email")
        d = kernel.evaluate(Action(tool="SEND_EMAIL", agent="a1"))  # type: ignore[arg-type]
        assert (d.code, d.tool) == ("invalid_identity", "send_email")


def test_state_and_audit_databases_are_created_private(tmp_path: Path) -> None:
    with Kernel.from_text("version: 1\nrules:\n  - {id: a, effect: allow}\n",
                          audit=tmp_path / "a.db", state=tmp_path / "s.db") as kernel:
        kernel.evaluate(Action(tool="t"))
    for name in ("a.db", "s.db"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_default_allow_warns_when_a_kernel_is_built(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("version: 1\ndefault: allow\nrules: []\n", encoding="utf-8")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        Kernel.from_policy(tmp_path / "p.yaml", audit=False).close()
    assert [w.category for w in seen] == [PolicyWarning]
    assert str(seen[0].message).startswith(f"{tmp_path / 'p.yaml'}:2:10: warning:")
    assert bastion.PolicyWarning is PolicyWarning


def test_the_audit_cli_takes_the_sqlite_url_the_kernel_takes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    with Kernel.from_text("version: 1\nrules:\n  - {id: a, effect: allow}\n",
                          audit=url) as kernel:
        kernel.evaluate(Action(tool="t"))
    proc = _cli("audit", "verify", url, cwd=tmp_path)
    assert proc.returncode == 0 and "intact" in proc.stdout, proc.stderr
    proc = _cli("audit", "tail", url, "-n", "1", cwd=tmp_path)
    assert proc.returncode == 0 and '"tool": "t"' in proc.stdout, proc.stderr
    proc = _cli("audit", "verify", "redis://x", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr


def test_an_elevation_needs_an_audit_log() -> None:
    catalog = parse_catalog("version: 1\ntools:\n  send_email: {class: egress}\n")
    guard = RingGuard(catalog, ring_of=lambda agent: 3, state=open_store(None))
    with pytest.raises(ConfigError, match="audited"):
        guard.elevate("bot", 1, seconds=60, approved_by="lead", reason="incident")
    assert guard.ring("bot") == 3


def test_a_limit_on_a_deny_rule_is_refused_where_it_is_written() -> None:
    with pytest.raises(PolicyError) as err:
        bastion.policy.parse_policy(
            "version: 1\nrules:\n  - id: a\n    effect: deny\n    limit: 5/minute\n",
            path="p.yaml")
    assert (err.value.line, err.value.column) == (5, 5)
    assert "limit" in err.value.message


class _Address:
    """An object whose text is not what a tool reads of it."""

    def __init__(self, shown: str, real: str):
        self.shown, self.real = shown, real

    def __str__(self) -> str:
        return self.shown


def test_an_object_whose_text_matches_an_allow_rule_is_not_that_string() -> None:
    """Any other object fails closed: every condition reading ``args`` errs."""
    with Kernel.from_text(GUARDED, audit=False) as kernel:
        d = kernel.evaluate(Action(tool="t", args={"to": _Address("ops", "x@evil.test")}))
        assert d.effect == "deny" and d.rule_ids == ("big", "adult"), (d.rule_ids, d.errors)
        d = kernel.evaluate(Action(tool="t", args={"to": "ops", "x": object()}))
        assert d.effect == "deny" and d.errors, (d.rule_ids, d.errors)


def test_a_host_rule_written_in_punycode_is_refused_where_it_is_written() -> None:
    with pytest.raises(PolicyError) as err:  # host() gives Unicode: the rule would never match
        bastion.policy.parse_policy(
            "version: 1\nrules:\n  - id: no-bank\n"
            "    when: host(args.url) == 'xn--80ab2al.xn--p1ai'\n    effect: deny\n",
            path="p.yaml")
    assert (err.value.line, err.value.column) == (4, 11) and "xn--" in err.value.message


def test_a_post_tool_rule_for_one_tool_warns_that_other_results_get_the_default() -> None:
    one = ("version: 1\nrules:\n  - {id: a, effect: allow}\n"
           "  - {id: mask, stage: post_tool, tools: [f], effect: redact, redact: [result.x]}\n")
    warned = bastion.policy.parse_policy(one, path="p.yaml").warnings
    assert len(warned) == 1 and warned[0].startswith("p.yaml:4:6: warning: rules decide stage "
                                                     "'post_tool'"), warned
    every = one + "  - {id: results, stage: post_tool, effect: allow}\n"
    assert bastion.policy.parse_policy(every, path="p.yaml").warnings == ()
