"""Third adversarial review: the mends af3de3c (selection) and a7faa8d (shared facts).

Each test is either a finding of the review (fixed; the test holds the fix) or an attack the
code already stopped (kept as a regression test).
"""

from __future__ import annotations

import asyncio
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from flow_support import CATALOG, NO_SECRET_CATALOG, PACK, act

import bastion
import bastion.state
from bastion.adapters import ToolGate
from bastion.flow import Provenance
from bastion.kernel import _flow

ATTACKER = "US133000000121212121212"
LEDGER = ("untrusted", "internal", "tool:ledger")
SLACK = ("untrusted", "internal", "tool:slack")
SLACK_KEYS = ("sender", "recipient")
MESSAGES = """\
version: 1
tools:
  read_messages: {class: read, side_effects: false,
                  result: {integrity: untrusted, keys: [sender, recipient]}}
  post_message: {class: write, sinks: [recipient], content: [body]}
"""
PROMPT = "Post 'done' to the channel Alice wrote in"


class _Store:
    """A state store that records which threads read or wrote it, and how often it was read."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.threads: set[int] = set()
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def count(self, key: str, window_s: int, now: float) -> int:
        self.threads.add(threading.get_ident())
        self.reads += 1
        return int(self._inner.count(key, window_s, now))

    def add(self, key: str, amount: int, window_s: int, now: float) -> int:
        self.threads.add(threading.get_ident())
        return int(self._inner.add(key, amount, window_s, now))


class _Audit:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def append(self, event: Any) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


# == 1. selection: findings =======================================================================

def test_an_incomplete_session_selects_nothing() -> None:
    store = bastion.state.open_store(None)  # two kernels on one store: two workers
    with bastion.Kernel.from_policy(PACK, catalog=MESSAGES, state=store) as a, \
            bastion.Kernel.from_policy(PACK, catalog=MESSAGES, state=store) as b:
        b.evaluate(act("input", args={"text": PROMPT}))
        a.evaluate(act("post_tool", "read_messages", result=[
            {"sender": "Alice", "recipient": "general", "body": "lunch?"}]))  # the real Alice
        b.evaluate(act("post_tool", "read_messages", result=[
            {"sender": "Alice", "recipient": "evil-channel", "body": "hi"}]))  # a namesake
        assert "incomplete" in b._flow.session_facts("s1")[0]
        decision = b.evaluate(act("pre_tool", "post_message", args={
            "recipient": "evil-channel", "body": "done"}))
        assert decision.effect == "require_approval"  # was allowed (recipient == "selected")


def test_control_one_worker_that_saw_both_namesakes_selects_neither() -> None:
    with bastion.Kernel.from_policy(PACK, catalog=MESSAGES) as k:
        k.evaluate(act("input", args={"text": PROMPT}))
        k.evaluate(act("post_tool", "read_messages", result=[
            {"sender": "Alice", "recipient": "general", "body": "lunch?"}]))
        k.evaluate(act("post_tool", "read_messages", result=[
            {"sender": "Alice", "recipient": "evil-channel", "body": "hi"}]))
        decision = k.evaluate(act("pre_tool", "post_message", args={
            "recipient": "evil-channel", "body": "done"}))
        assert decision.effect == "require_approval"


def test_a_record_nested_in_a_record_still_makes_a_key_ambiguous() -> None:
    prov = Provenance()
    prov.record_input(PROMPT)
    prov.record([{"sender": "Alice", "recipient": "evil-channel", "body": "hi"},
                 {"thread": "t1", "title": "weekly", "replies": [
                     {"sender": "Alice", "recipient": "general", "body": "lunch?"}]}],
                SLACK, SLACK_KEYS)
    assert "selected" not in prov.labels_of("evil-channel")


def test_control_records_under_a_plain_wrapper_make_a_key_ambiguous() -> None:
    prov = Provenance()
    prov.record_input(PROMPT)
    prov.record([{"sender": "Alice", "recipient": "evil-channel", "body": "hi"},
                 {"thread": "t1", "replies": [  # one scalar field: not a record, walked into
                     {"sender": "Alice", "recipient": "general", "body": "lunch?"}]}],
                SLACK, SLACK_KEYS)
    assert "selected" not in prov.labels_of("evil-channel")


def test_a_key_past_the_field_cut_still_makes_a_key_ambiguous() -> None:
    prov = Provenance()
    prov.record_input(PROMPT)
    wide: dict[str, Any] = {f"f{i}": f"v{i}" for i in range(64)}
    wide.update(sender="Alice", recipient="general")
    prov.record([{"sender": "Alice", "recipient": "evil-channel", "body": "hi"}, wide],
                SLACK, SLACK_KEYS)
    assert "selected" not in prov.labels_of("evil-channel")


@pytest.mark.parametrize(("prompt", "field", "value"), [
    ("refund the 10.00 I was charged", "amount", "10.00"),
    ("refund the 1,200.00 I was charged", "amount", "1,200.00"),
    ("refund what I paid on 07/03/2022", "date", "07/03/2022"),
])
def test_a_number_or_date_held_as_a_string_names_no_record(prompt: str, field: str,
                                                           value: str) -> None:
    prov = Provenance()
    prov.record_input(prompt)
    prov.record([{"sender": ATTACKER, "recipient": "me", field: value, "subject": "x"}],
                LEDGER, ("sender", "recipient", field))
    assert "selected" not in prov.labels_of(ATTACKER)


def test_a_word_inside_a_typed_url_is_not_typed() -> None:
    prov = Provenance()
    prov.record_input("summarise https://news.example/weekly-digest for me")
    prov.record([{"sender": "weekly", "recipient": "evil-channel", "body": "b"}],
                SLACK, SLACK_KEYS)
    assert "selected" not in prov.labels_of("evil-channel")


# == 1b. selection: attacks that are stopped =====================================================

@pytest.mark.parametrize(("prompt", "value"), [
    ("refund the 10 I was charged", "10"),
    ("refund what I paid on 2022-03-07", "2022-03-07"),
    ("refund account 12345678", "12345678"),
])
def test_a_number_or_iso_date_string_names_no_record(prompt: str, value: str) -> None:
    prov = Provenance()
    prov.record_input(prompt)
    prov.record([{"sender": ATTACKER, "recipient": "me", "ref": value, "subject": "x"}],
                LEDGER, ("sender", "recipient", "ref"))
    assert "selected" not in prov.labels_of(ATTACKER)


@pytest.mark.parametrize(("prompt", "key"), [
    ("post where axxbcd wrote", "a.*bcd"),
    ("post where (alice) wrote", "lice)"),
    ("post where alicebob wrote", "alice"),
    ("post where Zoë wrote", "Zoe"),
])
def test_keys_with_regex_characters_or_near_words_are_not_typed(prompt: str, key: str) -> None:
    prov = Provenance()
    prov.record_input(prompt)
    prov.record([{"sender": key, "recipient": "evil-channel", "body": "b"}], SLACK, SLACK_KEYS)
    assert "selected" not in prov.labels_of("evil-channel")


def test_a_key_typed_in_another_unicode_form_is_typed() -> None:
    prov = Provenance()
    prov.record_input(unicodedata.normalize("NFD", "post where José Núñez wrote"))
    prov.record([{"sender": "José Núñez", "recipient": "general", "body": "b"}],
                SLACK, SLACK_KEYS)
    assert "selected" in prov.labels_of("general")


def test_typed_scan_over_full_atoms_and_64_records_stays_bounded() -> None:
    prov = Provenance()
    prov.record([f"junk value {i}" for i in range(1_500)], LEDGER)
    words = [f"zq{i:05d}x" for i in range(2_400)]
    for i in range(2_400):
        prov.record_input(" ".join(words[i:i + 3]))
    # 64 records, each with a unique key that is a piece (not a word) of the user's text
    prov.record([{"sender": f"q{2_300 + i:05d}", "recipient": "evil-channel"}
                 for i in range(64)], SLACK, ("sender",))
    assert len(prov._atoms) == 4_096 and "q02300" in prov._haystack("trusted_text")
    started = time.perf_counter()
    assert "selected" not in prov.labels_of("evil-channel")
    assert time.perf_counter() - started < 0.5  # ~40 ms here: 64 x 4,096 atoms scanned


# == 2. history and flow_incomplete: findings ====================================================

ORDER = """\
version: 1
name: scan-after-download
default: deny
rules:
  - id: upload-needs-a-scan-after-the-last-download
    stage: pre_tool
    tools: [upload]
    when: >-
      session.history.filter(t, t == "download" || t == "scan")[size(session.history.filter(t,
      t == "download" || t == "scan")) - 1] == "download"
    effect: deny
  - id: allow-calls
    stage: pre_tool
    effect: allow
"""


def test_an_order_rule_sees_the_last_download_after_the_window() -> None:
    with bastion.Kernel.from_text(ORDER) as k:
        for tool in ["download", "scan", "download"] + ["list_files"] * 64:
            assert k.evaluate(act("pre_tool", tool, args={})).allowed
        assert not k.evaluate(act("pre_tool", "upload", args={})).allowed


def test_control_an_order_rule_inside_the_window() -> None:
    with bastion.Kernel.from_text(ORDER) as k:
        for tool in ["download", "scan", "download"]:
            k.evaluate(act("pre_tool", tool, args={}))
        assert not k.evaluate(act("pre_tool", "upload", args={})).allowed


def _evict_s1(k: bastion.Kernel) -> None:
    k.evaluate(act("post_tool", "get_balance", result={"balance": 10}))  # recorded whatever
    k.evaluate(act("post_tool", "get_balance", session="s2", result={"balance": 10}))  # evicts s1
    assert k.flow_sessions_evicted >= 1


CEDAR = "permit(principal, action, resource);"


def test_a_cedar_kernel_does_not_deny_an_incomplete_session_for_history(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_flow, "MAX_FLOW_SESSIONS", 1)
    with bastion.Kernel.from_text(CEDAR, format="cedar", catalog=CATALOG) as k:
        _evict_s1(k)
        decision = k.evaluate(act("pre_tool", "get_balance", args={}))
        assert decision.code != "flow_incomplete"


UNRELATED = """\
version: 1
name: unrelated-history
default: deny
rules:
  - id: no-history-folder
    stage: pre_tool
    tools: [list_files]
    when: 'args.folder == "history"'
    effect: deny
  - id: no-read-after-secret
    stage: pre_tool
    tools: [read_inbox]
    when: '"secret" in session.labels'
    effect: deny
  - id: allow
    effect: allow
"""
NOT_A_CANDIDATE = """\
version: 1
name: history-elsewhere
default: deny
rules:
  - id: no-upload-after-download
    stage: pre_tool
    tools: [upload]
    when: '"download" in session.history'
    effect: deny
  - id: no-read-after-secret
    stage: pre_tool
    tools: [read_inbox]
    when: '"secret" in session.labels'
    effect: deny
  - id: allow
    effect: allow
"""


@pytest.mark.parametrize("policy", [UNRELATED, NOT_A_CANDIDATE], ids=["literal", "other-tool"])
def test_flow_incomplete_only_when_an_applicable_rule_reads_history(
        policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_flow, "MAX_FLOW_SESSIONS", 1)
    with bastion.Kernel.from_text(policy, catalog=CATALOG) as k:
        _evict_s1(k)
        decision = k.evaluate(act("pre_tool", "read_inbox", args={}))
        assert decision.code != "flow_incomplete" and decision.allowed


# == 2b. history and flow_incomplete: attacks that are stopped ===================================

SEQUENCE = """\
version: 1
name: sequence
default: deny
rules:
  - id: no-upload-after-download
    stage: pre_tool
    tools: [upload]
    when: '"download" in session.history'
    effect: deny
    message: the history of the session forbids it
  - id: allow-calls
    stage: pre_tool
    effect: allow
"""
LAST = """\
version: 1
name: last-call
default: deny
rules:
  - id: no-upload-right-after-download
    stage: pre_tool
    tools: [upload]
    when: 'session.history[size(session.history) - 1] == "download"'
    effect: deny
  - id: allow-calls
    stage: pre_tool
    effect: allow
"""


def test_the_last_call_is_last_after_the_window() -> None:
    with bastion.Kernel.from_text(LAST) as k:
        for tool in ["download"] + ["list_files"] * 64:
            k.evaluate(act("pre_tool", tool, args={}))
        assert k.evaluate(act("pre_tool", "upload", args={})).allowed
        k.evaluate(act("pre_tool", "download", args={}))
        assert not k.evaluate(act("pre_tool", "upload", args={})).allowed


def _incomplete_code(decision: bastion.Decision) -> None:
    assert decision.effect == "deny" and decision.code == "flow_incomplete"
    assert decision.errors and "session.history" in decision.errors[0]


def test_flow_incomplete_on_every_path_and_in_the_audit_event(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_flow, "MAX_FLOW_SESSIONS", 1)
    audit = _Audit()
    with bastion.Kernel.from_text(SEQUENCE, audit=audit) as k:
        assert k.evaluate(act("pre_tool", "download", args={})).allowed
        k.evaluate(act("pre_tool", "list_files", session="s2", args={}))  # evicts s1
        _incomplete_code(k.evaluate(act("pre_tool", "upload", args={})))
        _incomplete_code(asyncio.run(k.aevaluate(act("pre_tool", "upload", args={}))))
        pre = ToolGate(k, agent={"id": "agent-1"}, session={"id": "s1"}).before("upload", {})
        assert not pre.run
        _incomplete_code(pre.decision)

        @bastion.govern(k, agent={"id": "agent-1"}, session={"id": "s1"})
        def upload() -> str:
            return "uploaded"

        with pytest.raises(bastion.GovernanceDenied) as denied:
            upload()
        _incomplete_code(denied.value.decision)
        events = [e for e in audit.events if e.get("code") == "flow_incomplete"]
        assert len(events) == 4
        assert all(e["kind"] == "decision" and e["effect"] == "deny" and e["errors"]
                   and "session.history" in e["reasons"][0] for e in events)


def test_history_only_in_a_message_does_not_deny_an_incomplete_session(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_flow, "MAX_FLOW_SESSIONS", 1)
    policy = """\
version: 1
name: message-only
default: deny
rules:
  - id: no-read-after-secret
    stage: pre_tool
    tools: [read_inbox]
    when: '"secret" in session.labels'
    effect: deny
    message: see the history of this rule
  - id: allow
    effect: allow
"""
    with bastion.Kernel.from_text(policy, catalog=CATALOG) as k:
        _evict_s1(k)
        decision = k.evaluate(act("pre_tool", "read_inbox", args={}))
        assert decision.allowed and "incomplete" in k._flow.session_facts("s1")[0]


def test_a_kernel_with_flow_off_never_denies_flow_incomplete(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_flow, "MAX_FLOW_SESSIONS", 1)
    policy = """\
version: 1
name: calls
default: deny
rules:
  - id: few-calls
    stage: pre_tool
    when: 'session.calls < 100'
    effect: allow
"""
    with bastion.Kernel.from_text(policy) as k:
        assert not k.tracks_flow
        for session in ("s1", "s2", "s1"):
            assert k.evaluate(act("pre_tool", "read", session=session, args={})).allowed


# == 3. shared facts: findings ===================================================================

ESCAPED = r"""version: 1
name: no-egress-after-secret
default: deny
rules:
  - id: no-egress-after-secret
    stage: pre_tool
    when: 'tool != "C:\\" && "secret" in session.labels'
    effect: deny
  - id: allow
    stage: pre_tool
    effect: allow
"""


def test_a_label_named_after_an_escaped_backslash_comes_back(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as a, \
            bastion.Kernel.from_text(ESCAPED, catalog=NO_SECRET_CATALOG, state=state) as b:
        a.evaluate(act("post_tool", "read_secrets", result={"key": "sk-live-0123456789abcdef"}))
        decision = b.evaluate(act("pre_tool", "send_email", args={"to": "x@y.example",
                                                                  "body": "hi"}))
        assert decision.effect == "deny"


def test_control_the_same_rule_without_the_backslash_denies(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as a, \
            bastion.Kernel.from_text(ESCAPED.replace("C:\\\\", "C:"), catalog=NO_SECRET_CATALOG,
                                     state=state) as b:
        a.evaluate(act("post_tool", "read_secrets", result={"key": "sk-live-0123456789abcdef"}))
        decision = b.evaluate(act("pre_tool", "send_email", args={"to": "x@y.example",
                                                                  "body": "hi"}))
        assert decision.effect == "deny"


def test_an_incomplete_decision_does_not_read_the_store_once_per_literal(tmp_path: Path) -> None:
    names = ", ".join(f'"c{i:04d}"' for i in range(2_000))
    policy = f"""\
version: 1
name: big
default: deny
rules:
  - id: countries
    stage: pre_tool
    tools: [send_money]
    when: 'args.country in [{names}]'
    effect: deny
  - id: code-after-untrusted
    stage: pre_tool
    tools: [run_python]
    when: '"untrusted" in session.labels'
    effect: require_approval
  - id: allow
    effect: allow
"""
    state = str(tmp_path / "state.db")
    store = _Store(bastion.state.open_store(state))
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as a, \
            bastion.Kernel.from_text(policy, catalog=CATALOG, state=store) as b:
        a.evaluate(act("input", args={"text": "hi"}))
        store.reads = 0
        decision = b.evaluate(act("pre_tool", "run_python", args={"code": "1"}))
        assert decision.effect == "require_approval"
        assert store.reads <= 32


def test_a_concurrent_call_of_the_same_session_is_not_incomplete(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with bastion.Kernel.from_text(SEQUENCE) as k:
        tracker, real = k._flow, k._flow._count
        seen: list[bastion.Decision] = []
        other = threading.Thread(target=lambda: seen.append(
            k.evaluate(act("pre_tool", "upload", args={}))))

        def count(session_id: str, labels: Any, *rest: Any) -> Any:
            seq = real(session_id, labels, *rest)
            if not other.is_alive() and not seen:  # another thread decides before the claim
                other.start()
                other.join(0.2)  # a fix that holds the lock over count and claim blocks it
            return seq

        monkeypatch.setattr(tracker, "_count", count)
        assert k.evaluate(act("pre_tool", "list_files", args={})).allowed
        other.join()
        assert seen[0].allowed, seen[0].code


CONF_CATALOG = """\
version: 1
tools:
  read_hr: {class: read, side_effects: false,
            result: {integrity: trusted, confidentiality: "pii:hr"}}
  send_email: {class: egress, sinks: [to], content: [body]}
"""
CONF_POLICY = """\
version: 1
name: hr
default: deny
rules:
  - id: no-egress-after-hr
    stage: pre_tool
    tools: [send_email]
    when: '"pii:hr" in session.labels'
    effect: deny
  - id: allow
    effect: allow
"""


def test_a_confidentiality_label_either_is_refused_or_reaches_session_labels() -> None:
    try:
        k = bastion.Kernel.from_text(CONF_POLICY, catalog=CONF_CATALOG)
    except bastion.BastionError:
        return  # refusing the label at load is a fix too
    with k:
        k.evaluate(act("post_tool", "read_hr", result={"salary": "Dora: 91,000"}))
        decision = k.evaluate(act("pre_tool", "send_email", args={"to": "x@y.example",
                                                                  "body": "hi"}))
        assert decision.effect == "deny"


def test_aevaluate_keeps_flow_store_io_off_the_event_loop(tmp_path: Path) -> None:
    store = _Store(bastion.state.open_store(str(tmp_path / "state.db")))
    with bastion.Kernel.from_text(SEQUENCE, state=store) as k:
        async def run() -> int:
            await k.aevaluate(act("pre_tool", "download", args={}))
            await k.aevaluate(act("pre_tool", "upload", args={}))
            return threading.get_ident()

        loop_thread = asyncio.run(run())
        assert loop_thread not in store.threads
