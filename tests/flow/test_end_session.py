"""Ending a session (``Kernel.end_session``): its flow facts are forgotten here, and every kernel
on the state store, this one included, denies what the session's labels would decide."""

from __future__ import annotations

from pathlib import Path

import pytest
from flow_support import ARGS_ONLY, CATALOG, PACK, act, read_injection

import bastion
from bastion.audit import read_events, verify
from bastion.kernel import _flowfacts

PAY = {"recipient": "US133000000121212121212", "amount": 5000}


def test_an_ended_session_is_forgotten_and_denied_in_the_same_kernel() -> None:
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG) as k:
        read_injection(k)
        assert len(k._flow) == 1
        k.end_session("s1", by="ops", reason="conversation closed")
        assert len(k._flow) == 0  # the provenance is gone
        decision = k.evaluate(act("pre_tool", "send_money", args=PAY))
        assert (decision.allowed, decision.code) == (False, "session_ended")
        assert "end_session" in decision.errors[0]
        # a harmless call too: nothing in an ended session is decided from its labels
        assert k.evaluate(act("pre_tool", "send_money", args={
            "recipient": "me", "amount": 1})).code == "session_ended"
        # another session is untouched
        assert k.evaluate(act("input", args={"text": "pay 5 to bob"}, session="s2")).allowed


def test_every_kernel_on_a_shared_store_denies_an_ended_session(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as a, \
            bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as b:
        read_injection(a)
        read_injection(b)  # b holds (part of) the session in its own memory
        a.end_session("s1", by="ops")
        decision = b.evaluate(act("pre_tool", "send_money", args=PAY))
        assert (decision.allowed, decision.code) == (False, "session_ended")
        # the session's label counters are gone from the store; its tombstone stays
        store = a.state
        assert store.counts("flow:l:s1:", _flowfacts.FOREVER, 0) == {}
        assert store.count("flow:n:s1", _flowfacts.FOREVER, 0) >= _flowfacts.ENDED_COUNT


def test_ending_a_session_keeps_the_counters_of_a_session_whose_id_extends_it(
        tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as a:
        read_injection(a, "s1")
        read_injection(a, "s1:x")
        a.end_session("s1", by="ops")
        assert a.state.count("flow:l:s1:x:untrusted", _flowfacts.FOREVER, 0) == 1
        ok = a.evaluate(act("pre_tool", "send_money", args={"recipient": "me", "amount": 1},
                            session="s1:x"))
        assert ok.code != "session_ended"


def test_kernels_sharing_an_in_memory_store_see_the_end() -> None:
    store = bastion.state.open_store(None)
    a = bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=store)
    b = bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=store)
    read_injection(b)
    a.end_session("s1", by="ops")
    assert b.evaluate(act("pre_tool", "send_money", args=PAY)).code == "session_ended"


def test_a_cedar_kernel_denies_an_ended_session() -> None:
    pytest.importorskip("cedarpy")
    cedar = ('permit(principal, action, resource) when { !(context.session.labels.contains('
             '"untrusted")) };')
    with bastion.Kernel.from_text(cedar, format="cedar", catalog=CATALOG) as k:
        k.evaluate(act("post_tool", "read_inbox", result=[{"body": "hello"}]))
        k.end_session("s1", by="ops")
        assert k.evaluate(act("pre_tool", "send_money", args=PAY)).code == "session_ended"


def test_ending_is_audited_and_needs_an_identity(tmp_path: Path) -> None:
    log = tmp_path / "audit.db"
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, audit=str(log)) as k:
        with pytest.raises(bastion.ConfigError):
            k.end_session("s1", by="")
        with pytest.raises(bastion.ConfigError):
            k.end_session("", by="ops")
        k.end_session("s1", by="ops", reason="closed")
    events = list(read_events(log))
    ended = [e for e in events if e.get("kind") == "session.end"]
    assert [(e["session"], e["by"], e["reason"]) for e in ended] == [("s1", "ops", "closed")]
    assert verify(log).ok


def test_a_policy_reading_only_argument_labels_denies_an_ended_session() -> None:
    with bastion.Kernel.from_text(ARGS_ONLY, catalog=CATALOG) as k:
        read_injection(k)
        assert k.evaluate(act("pre_tool", "send_money", args=PAY)).code != "session_ended"
        k.end_session("s1", by="ops")
        # the forgotten injection would make the recipient `unknown`: allowed, were it not ended
        assert k.evaluate(act("pre_tool", "send_money", args=PAY)).code == "session_ended"


def test_no_arguments_at_all_is_the_empty_map() -> None:
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG) as k:
        decision = k.evaluate(act("pre_tool", "get_time", args=None))  # type: ignore[arg-type]
        assert decision.allowed and decision.code != "invalid_args"
        refused = k.evaluate(act("pre_tool", "get_time", args=["x"]))  # type: ignore[arg-type]
        assert (refused.allowed, refused.code) == (False, "invalid_args")
