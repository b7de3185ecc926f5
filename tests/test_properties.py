"""Property tests (Hypothesis) of the kernel's contracts: deny dominates, allow rules cannot undo a
deny, default deny, tool-name canonicalisation, and "an audit log verifies iff untouched"."""

from __future__ import annotations

import json
import sqlite3
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bastion
from bastion._canon import canonical_tool
from bastion.audit import verify

try:
    from test_differential import actions, conditions, policy_texts, values
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests.test_differential import actions, conditions, policy_texts, values

STAGES = ["input", "pre_tool", "post_tool", "output"]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _action(act: dict[str, Any], tool: str | None = None) -> bastion.Action:
    return bastion.Action(tool=act["tool"] if tool is None else tool, args=act["args"],
                          stage=act["stage"], agent={"id": act["agent"]},
                          context=act["context"], result=act["result"])


def _glob(act: dict[str, Any]) -> str:
    """A tool glob naming exactly the action's tool ("*" when it has no valid name)."""
    return (canonical_tool(act["tool"]) if act["tool"] else None) or "*"


def _decide(policy: dict[str, Any] | str, action: bastion.Action) -> bastion.Decision:
    text = policy if isinstance(policy, str) else json.dumps(policy)
    with bastion.Kernel.from_text(text, audit=False) as kernel:
        return kernel.evaluate(action)


# -- deny dominates ---------------------------------------------------------------------------

@FAST
@given(policy_text=policy_texts(), act=actions(), data=st.data())
def test_a_matching_deny_rule_makes_any_decision_deny(policy_text: str, act: dict[str, Any],
                                                       data: st.DataObject) -> None:
    doc = json.loads(policy_text)
    tool = _glob(act)
    deny: dict[str, Any] = {"id": "zz-deny", "stage": act["stage"], "effect": "deny",
                            "tools": [data.draw(st.sampled_from([tool, "*"]))]}
    # an erroring condition matches for deny (DESIGN.md), so it must dominate just as well
    when = data.draw(st.sampled_from(
        [None, "true", "args.zz_missing > 0", "1 / (size(args) - size(args)) > 0"]))
    if when is not None:
        deny["when"] = when
    doc["rules"].insert(data.draw(st.integers(0, len(doc["rules"]))), deny)
    d = _decide(doc, _action(act))
    assert d.effect == "deny", (doc, act, d)
    assert not d.allowed
    if d.code not in ("invalid_tool", "missing_tool"):  # names the kernel refuses before policy
        assert (d.code, "zz-deny" in d.rule_ids) == ("policy", True), (doc, act, d)


@FAST
@given(policy_text=policy_texts(), act=actions(), data=st.data())
def test_adding_an_allow_rule_never_undoes_a_deny_or_approval(
        policy_text: str, act: dict[str, Any], data: st.DataObject) -> None:
    doc = json.loads(policy_text)
    # one more deny/require_approval rule that can apply, so that most examples have a rule decide
    decider: dict[str, Any] = {"id": "zz-decider", "stage": act["stage"],
                               "effect": data.draw(st.sampled_from(["deny", "require_approval"])),
                               "tools": [data.draw(st.sampled_from(["*", _glob(act)]))]}
    if data.draw(st.booleans()):
        decider["when"] = data.draw(conditions())
    doc["rules"].insert(data.draw(st.integers(0, len(doc["rules"]))), decider)
    before = _decide(doc, _action(act))
    # decided by a deny or require_approval rule (not the default, not a kill switch or limit)
    assume(before.effect in ("deny", "require_approval") and before.rule_ids
           and before.code in ("policy", "approval"))
    allow: dict[str, Any] = {"id": "zz-allow", "effect": "allow",
                             "stage": data.draw(st.sampled_from([act["stage"], *STAGES])),
                             "tools": [data.draw(st.sampled_from(["*", _glob(act)]))]}
    when = data.draw(st.sampled_from([None, "true", "args.zz_missing > 0", "size(args) >= 0"]))
    if when is not None:
        allow["when"] = when
    doc["rules"].insert(data.draw(st.integers(0, len(doc["rules"]))), allow)
    after = _decide(doc, _action(act))
    assert after.effect == before.effect, (doc, act, before, after)
    assert after.rule_ids == before.rule_ids


# -- default deny -----------------------------------------------------------------------------

EMPTY_POLICIES = ["version: 1\n", "version: 1\nrules: []\n",
                  "version: 1\ndefault: deny\nrules: []\n"]


@settings(max_examples=300, deadline=None)
@given(policy=st.sampled_from(EMPTY_POLICIES),
       stage=st.one_of(st.sampled_from(STAGES), st.text(max_size=12)),
       tool=st.one_of(st.none(), st.text(max_size=20), st.sampled_from(
           ["send_email", "*", "", "transfer", "ｔｒａｎｓｆｅｒ", "a/b:c.d-e",
            "drop\u200btable"])),
       args=st.dictionaries(st.text(max_size=5), values, max_size=3))
def test_an_empty_rule_set_denies_everything(policy: str, stage: str, tool: str | None,
                                             args: dict[str, Any]) -> None:
    d = _decide(policy, bastion.Action(tool=tool, args=args, stage=stage,
                                       agent={"id": "agent-1"}))
    assert d.effect == "deny", d
    assert not d.allowed
    assert d.rule_ids == ()


# -- canonical tool names ---------------------------------------------------------------------

ZERO_WIDTH = ["\u200b", "\u200d", "\ufeff", "\u202e", "\u200c", "\u2066", "\u00ad"]
BASES = ["send_email", "transfer", "drop_table", "read_file", "fs.read:v2/x-y"]
CANON_POLICY = json.dumps({"version": 1, "rules": [
    {"id": "drop", "tools": ["drop_*"], "effect": "deny"},
    {"id": "big", "tools": ["transfer"], "when": "args.amount > 100", "effect": "require_approval"},
    {"id": "transfer", "tools": ["transfer"], "effect": "allow"},
    {"id": "mail", "tools": ["send_email"], "when": "tool == 'send_email'", "effect": "allow"},
    {"id": "read", "tools": ["read_*", "fs.*"], "when": "norm(tool).startsWith('read')",
     "effect": "allow"},
    {"id": "audit-read", "tools": ["read_file"], "effect": "audit"},
]})


def _fullwidth(ch: str) -> str:
    return chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch


@st.composite
def spellings(draw: st.DrawFn, base: str) -> str:
    """A spelling of ``base`` that canonicalises to it: case, fullwidth forms, compatibility
    characters, and invisible format characters anywhere."""
    out = []
    i = 0
    while i < len(base):
        ch = base[i]
        if base.startswith("fi", i) and draw(st.integers(0, 3)) == 0:
            out.append("\ufb01")  # the "fi" ligature
            i += 2
            continue
        how = draw(st.sampled_from(["same", "upper", "fullwidth", "fullwidth-upper", "compat"]))
        if how == "upper":
            ch = ch.upper()
        elif how == "fullwidth":
            ch = _fullwidth(ch)
        elif how == "fullwidth-upper":
            ch = _fullwidth(ch.upper())
        elif how == "compat":
            ch = {"k": "\u212a", "s": "\u017f"}.get(ch, ch)  # KELVIN SIGN, LATIN SMALL LONG S
        out.append(ch)
        if draw(st.integers(0, 2)) == 0:
            out.append(draw(st.sampled_from(ZERO_WIDTH)))
        i += 1
    if draw(st.booleans()):
        out.insert(0, draw(st.sampled_from(ZERO_WIDTH)))
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from(BASES), data=st.data(), amount=st.sampled_from([5, 500]),
       stage=st.sampled_from(["pre_tool", "pre_tool", *STAGES]))
def test_spellings_of_one_canonical_name_get_one_decision(base: str, data: st.DataObject,
                                                           amount: int, stage: str) -> None:
    variant = data.draw(spellings(base))
    assert canonical_tool(variant) == base, ascii(variant)
    with bastion.Kernel.from_text(CANON_POLICY, audit=False) as kernel:
        plain = kernel.evaluate(bastion.Action(tool=base, args={"amount": amount}, stage=stage))
        other = kernel.evaluate(bastion.Action(tool=variant, args={"amount": amount},
                                               stage=stage))
    assert (other.effect, other.rule_ids, other.code, other.obligations, other.tool) == (
        plain.effect, plain.rule_ids, plain.code, plain.obligations, base), ascii(variant)


def _survives(ch: str) -> bool:
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", ch).casefold())
    return any(ord(c) > 0x7F and unicodedata.category(c).startswith("L") for c in folded)


PERMISSIVE = json.dumps({"version": 1, "default": "allow", "rules": [
    {"id": f"allow-{s}", "stage": s, "tools": ["*"], "effect": "allow"} for s in STAGES]})


@settings(max_examples=300, deadline=None)
@given(base=st.sampled_from([*BASES, "x"]),
       letter=st.characters(categories=["Lu", "Ll", "Lt", "Lm", "Lo"], min_codepoint=0x80)
       .filter(_survives),
       data=st.data(), stage=st.sampled_from(STAGES))
def test_a_non_ascii_letter_in_a_tool_name_is_invalid(base: str, letter: str,
                                                      data: st.DataObject, stage: str) -> None:
    at = data.draw(st.integers(0, len(base)))
    tool = base[:at] + letter + base[at:]
    d = _decide(PERMISSIVE, bastion.Action(tool=tool, stage=stage, agent={"id": "agent-1"}))
    assert (d.effect, d.code) == ("deny", "invalid_tool"), ascii(tool)
    assert not d.allowed


# -- an audit log verifies iff it was not modified --------------------------------------------

AUDIT_POLICY = json.dumps({"version": 1, "rules": [
    {"id": "drop", "tools": ["drop_*"], "effect": "deny"},
    {"id": "big", "tools": ["transfer"], "when": "args.a > 3", "effect": "require_approval"},
    {"id": "any", "tools": ["*"], "when": "has(args.s)", "effect": "allow"},
]})
TAMPERS = ["flip_byte", "delete_row", "swap_bodies", "duplicate_row"]


def _tamper(path: str, how: str, data: st.DataObject) -> int:
    """Modify the stored entries with plain SQL; return the first position that must fail."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        rows = conn.execute("SELECT seq, body FROM entries ORDER BY seq").fetchall()
        n = len(rows)
        i = data.draw(st.integers(0, n - 1), label="row")
        if how == "flip_byte":
            body = bytearray(rows[i][1])
            at = data.draw(st.integers(0, len(body) - 1), label="byte")
            body[at] ^= data.draw(st.integers(1, 255), label="xor")
            conn.execute("UPDATE entries SET body = ? WHERE seq = ?", (bytes(body), rows[i][0]))
            return i
        if how == "delete_row":
            conn.execute("DELETE FROM entries WHERE seq = ?", (rows[i][0],))
            return i
        if how == "swap_bodies":
            j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i), label="other")
            conn.execute("UPDATE entries SET body = ? WHERE seq = ?", (rows[j][1], rows[i][0]))
            conn.execute("UPDATE entries SET body = ? WHERE seq = ?", (rows[i][1], rows[j][0]))
            return min(i, j)
        conn.execute("INSERT INTO entries (seq, body, mac, leaf) SELECT ?, body, mac, leaf "
                     "FROM entries WHERE seq = ?", (rows[-1][0] + 1, rows[i][0]))
        return n
    finally:
        conn.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(acts=st.lists(st.fixed_dictionaries({
    "tool": st.sampled_from(["send_email", "transfer", "drop_table", "ｔｒａｎｓｆｅｒ"]),
    "args": st.dictionaries(st.sampled_from(["a", "s", "x"]), values, max_size=3),
    "stage": st.sampled_from(STAGES), "agent": st.sampled_from(["agent-1", "bot"]),
    "context": st.just({}), "result": values}), min_size=2, max_size=8),
    how=st.sampled_from(TAMPERS), data=st.data())
def test_an_audit_log_verifies_iff_it_was_not_modified(
        tmp_path_factory: pytest.TempPathFactory, acts: list[dict[str, Any]], how: str,
        data: st.DataObject) -> None:
    path = str(tmp_path_factory.mktemp("audit") / "a.db")
    with bastion.Kernel.from_text(AUDIT_POLICY, audit=path, durable=True) as kernel:
        decisions = [kernel.evaluate(_action(act)) for act in acts]
    assert all(d.code not in ("audit_unavailable", "internal_error") for d in decisions)
    report = verify(path)
    assert report.ok, report
    assert report.entries == len(acts)
    first_bad = _tamper(path, how, data)
    report = verify(path)
    assert not report.ok, (how, report)
    assert report.first_bad_seq == first_bad, (how, report)
