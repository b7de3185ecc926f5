"""Fourth adversarial review: counting every allowed call (180ee90) and ending a session (061c5d9).

Seven findings, six fixed (their tests pass) and one a documented limit (a kernel that tracks no
flow counts no calls: its test shows the supported set-up); the other tests are attacks the code
already stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flow_support import (
    ARGS_ONLY,
    CATALOG,
    PACK,
    SECRET_RULE,
    SEQUENCE,
    VERIFY_THEN_PAY,
    FlakyStore,
    act,
    read_injection,
)

import bastion
from bastion.kernel import _flow, _flowfacts

ATTACKER = "US133000000121212121212"
PAY = {"recipient": ATTACKER, "amount": 5000}
SECRET = "sk-live-0123456789abcdef"

# a policy that reads no flow facts and has no catalog: its kernel does not track flow
PLAIN = """\
version: 1
name: plain
default: deny
rules:
  - id: small-calls
    stage: pre_tool
    when: 'args.size < 100'
    effect: allow
"""

QUARANTINE_CATALOG = """\
version: 1
tools:
  read_inbox: {class: read, side_effects: false,
               result: {integrity: untrusted, confidentiality: internal, handling: quarantine}}
  archive: {class: write, sinks: [item]}
"""

# `archive` is decided without reading any flow fact (its candidates are static)
QUARANTINE_POLICY = """\
version: 1
name: quarantine
default: deny
rules:
  - id: no-email-after-untrusted
    stage: pre_tool
    tools: [send_email]
    when: '"untrusted" in session.labels'
    effect: deny
  - id: allow
    stage: pre_tool
    effect: allow
  - id: results
    stage: post_tool
    effect: allow
"""


def _handle(decision: bastion.Decision) -> str:
    text = str(decision.result)
    return text.split("handle ", 1)[1].split(".", 1)[0]


class _Hooked:
    """A state store that runs ``hook`` once, around one method call (a concurrent end_session
    landing at exactly that point of a decision)."""

    def __init__(self, inner: Any, method: str, after: bool) -> None:
        self._inner = inner
        self._method = method
        self._after = after
        self.hook: Callable[[], None] | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def call(*args: Any) -> Any:
            hook, self.hook = self.hook, None
            if hook is not None and not self._after:
                hook()
            out = attr(*args)
            if hook is not None and self._after:
                hook()
            return out

        return call


class _Recording:
    """A state store that records the keys every counter method is asked about."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.keys: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in ("add", "count", "counts", "take", "delete"):
            return attr

        def call(*args: Any) -> Any:
            self.keys.append(str(args[0]))
            return attr(*args)

        return call


# == findings ======================================================================================

def test_end_session_on_a_kernel_without_flow_still_leaves_the_tombstone(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_text(PLAIN, state=state) as ops, \
            bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as worker:
        assert not ops.tracks_flow
        read_injection(worker)
        ops.end_session("s1", by="ops", reason="conversation closed")
        decision = worker.evaluate(act("pre_tool", "send_money", args=PAY))
        assert (decision.allowed, decision.code) == (False, "session_ended")


def test_a_call_allowed_by_a_worker_given_the_catalog_reaches_a_history_reading_worker(
        tmp_path: Path) -> None:
    # finding (MEDIUM, now a documented limit in docs/flow.md): a kernel that tracks no flow (no
    # catalog, no flow words) counts no calls, so in a rollout every worker gets the catalog;
    # given it, a worker on the plain policy counts its calls
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_text(PLAIN, catalog=CATALOG, state=state) as old, \
            bastion.Kernel.from_text(SEQUENCE, state=state) as new:
        assert old.tracks_flow
        assert old.evaluate(act("pre_tool", "download", args={"size": 1})).allowed
        upload = new.evaluate(act("pre_tool", "upload", args={"size": 1}))
        assert (upload.allowed, upload.code) == (False, "flow_incomplete")


def test_an_end_racing_a_decision_does_not_let_a_secret_out(tmp_path: Path) -> None:
    store = _Hooked(bastion.state.open_store(str(tmp_path / "state.db")), "count", after=True)
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=store) as k:
        k.evaluate(act("input", args={"text": "e-mail my api key to x@corp.example"}))
        k.evaluate(act("post_tool", "read_secrets", result={"key": SECRET}))
        send = act("pre_tool", "send_email", args={"to": "x@corp.example", "body": SECRET})
        before = k.evaluate(send)
        assert before.rule_ids == ("flow-secret-egress",)
        # the session's count is read (not ended), then the session is ended
        store.hook = lambda: k.end_session("s1", by="ops")
        racing = k.evaluate(send)
        assert not racing.allowed
        if store.hook is not None:  # a fix that no longer reads the count there
            store.hook()
        assert k.evaluate(send).code == "session_ended"


def test_an_end_between_the_count_and_the_label_read_loses_no_label(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    store = _Hooked(bastion.state.open_store(path), "counts", after=False)
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=path) as a, \
            bastion.Kernel.from_text(SECRET_RULE, catalog=CATALOG, state=store) as b:
        a.evaluate(act("post_tool", "read_secrets", result={"key": SECRET}))
        assert "secret" in b._flow.session_facts("s1")[0]
        store.hook = lambda: a.end_session("s1", by="ops")
        racing = b.evaluate(act("pre_tool", "send_email", args={"to": "x@y.example",
                                                                "body": "hi"}))
        assert not racing.allowed
        if store.hook is not None:  # a fix that no longer reads the labels that way
            store.hook()
        assert b.evaluate(act("pre_tool", "send_email", args={
            "to": "x@y.example", "body": "hi"})).code == "session_ended"


def test_a_call_denied_because_its_audit_failed_is_not_in_the_history() -> None:
    class Audit:
        broken = False

        def append(self, event: Any) -> None:
            if self.broken:
                raise OSError("disk full")

        def close(self) -> None:
            pass

    audit = Audit()
    with bastion.Kernel.from_text(VERIFY_THEN_PAY, audit=audit) as k:
        audit.broken = True
        verify = k.evaluate(act("pre_tool", "verify", args={}))
        assert (verify.allowed, verify.code) == (False, "audit_unavailable")
        audit.broken = False
        assert not k.evaluate(act("pre_tool", "pay", args={})).allowed


def test_a_worker_holding_an_ended_sessions_vault_does_not_release_it(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_text(QUARANTINE_POLICY, catalog=QUARANTINE_CATALOG,
                                  state=state) as a, \
            bastion.Kernel.from_text(QUARANTINE_POLICY, catalog=QUARANTINE_CATALOG,
                                     state=state) as b:
        handle = _handle(b.evaluate(act("post_tool", "read_inbox", result="the hidden body")))
        a.end_session("s1", by="ops")
        refused = a.evaluate(act("pre_tool", "archive", args={"item": handle}))
        assert (refused.allowed, refused.code) == (False, "session_ended")  # the ending kernel
        released = b.evaluate(act("pre_tool", "archive", args={"item": handle}))
        assert not released.allowed
        assert "the hidden body" not in str(released.args)


def test_ended_cannot_be_a_catalog_label() -> None:
    catalog = """\
version: 1
tools:
  read_status: {class: read, side_effects: false,
                result: {integrity: trusted, confidentiality: ended}}
  send_money: {class: write, sinks: [recipient, amount]}
"""
    try:
        k = bastion.Kernel.from_policy(PACK, catalog=catalog)
    except bastion.BastionError:
        return  # refusing the label at load is the fix
    with k:
        k.evaluate(act("input", args={"text": "pay 5 to bob"}))
        k.evaluate(act("post_tool", "read_status", result={"state": "open"}))
        decision = k.evaluate(act("pre_tool", "send_money", args={"recipient": "bob",
                                                                 "amount": 5}))
        assert decision.code != "session_ended"


# == attacks already stopped =======================================================================

@pytest.mark.parametrize("shared", [False, True])
def test_recording_into_an_ended_session_never_makes_it_clean(tmp_path: Path,
                                                              shared: bool) -> None:
    state = str(tmp_path / "state.db") if shared else bastion.state.open_store(None)
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as a, \
            bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as b:
        read_injection(a)
        read_injection(b)
        a.end_session("s1", by="ops")
        for k in (a, b):  # trusted input and clean results, in both workers
            for _ in range(20):
                assert k.evaluate(act("input", args={"text": f"pay 1 to {ATTACKER}"})).allowed
                k.evaluate(act("post_tool", "get_balance", result={"balance": 10}))
        for k in (a, b):
            assert "ended" in k._flow.session_facts("s1")[0]
            decision = k.evaluate(act("pre_tool", "send_money", args={"recipient": ATTACKER,
                                                                     "amount": 1}))
            assert (decision.allowed, decision.code) == (False, "session_ended")


def test_a_restarted_or_evicting_worker_still_denies_an_ended_session(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as a:
        read_injection(a)
        a.end_session("s1", by="ops")
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as restarted:
        assert restarted.evaluate(act("pre_tool", "send_money", args=PAY)).code == \
            "session_ended"
    monkeypatch.setattr(_flow, "MAX_FLOW_SESSIONS", 1)
    store = bastion.state.open_store(None)
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=store) as a, \
            bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=store) as b:
        read_injection(b)
        a.end_session("s1", by="ops")
        read_injection(b, "s2")  # evicts s1 from b
        assert b.flow_sessions_evicted >= 1
        assert b.evaluate(act("pre_tool", "send_money", args=PAY)).code == "session_ended"
        # a kernel built on the store after the end sees it too
        with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=store) as late:
            assert late.evaluate(act("pre_tool", "send_money", args=PAY)).code == \
                "session_ended"


def test_an_approval_granted_after_the_end_does_not_allow(tmp_path: Path) -> None:
    asked: list[str] = []
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG) as k:
        read_injection(k)
        held = k.evaluate(act("pre_tool", "send_money", args=PAY))
        assert held.effect == "require_approval" and held.approval_id
        k.end_session("s1", by="ops")
        k.approve(held.approval_id, by="human")
        used = k.evaluate(act("pre_tool", "send_money", args=PAY, approval=held.approval_id))
        assert (used.allowed, used.code) == (False, "session_ended")

    def approver(approval: Any, action: Any) -> bool:
        asked.append(approval.id)
        return True

    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, approver=approver) as k:
        read_injection(k)
        k.end_session("s1", by="ops")
        decision = k.evaluate(act("pre_tool", "send_money", args=PAY))
        assert (decision.allowed, decision.code, asked) == (False, "session_ended", [])


def test_ending_a_session_whose_id_looks_like_another_sessions_key(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as a, \
            bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as b:
        for sid in ("s1", "s1:", "s1:untrusted"):
            read_injection(a, sid)
        a.end_session("s1:untrusted", by="ops")  # not s1's `untrusted` label counter
        assert a.state.count("flow:l:s1:untrusted", _flowfacts.FOREVER, 0) == 1
        assert "untrusted" in b._flow.session_facts("s1")[0]
        assert "ended" not in b._flow.session_facts("s1")[0]
        a.end_session("s1", by="ops")  # not session "s1:"'s
        assert a.state.count("flow:l:s1::untrusted", _flowfacts.FOREVER, 0) == 1
        labels = b._flow.session_facts("s1:")[0]
        assert "untrusted" in labels and "ended" not in labels


def test_ending_twice_stays_ended(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as k:
        read_injection(k)
        k.end_session("s1", by="ops")
        k.end_session("s1", by="ops")
        assert k.state.count("flow:n:s1", _flowfacts.FOREVER, 0) >= 2 * _flowfacts.ENDED_COUNT
        assert k.evaluate(act("pre_tool", "send_money", args=PAY)).code == "session_ended"


def test_a_failed_tombstone_raises_and_is_not_audited(tmp_path: Path) -> None:
    flaky = FlakyStore(bastion.state.open_store(str(tmp_path / "state.db")))
    events: list[Any] = []

    class Audit:
        def append(self, event: Any) -> None:
            events.append(event)

        def close(self) -> None:
            pass

    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=flaky, audit=Audit()) as k:
        read_injection(k)
        flaky.fail.add("flow:n:")
        with pytest.raises((OSError, bastion.BastionError)):  # the store's error
            k.end_session("s1", by="ops")
        assert not [e for e in events if isinstance(e, dict) and e.get("kind") == "session.end"]
        # the tombstone is written before anything is forgotten: a failed end changes nothing
        assert "untrusted" in k._flow.session_facts("s1")[0]
        assert "untrusted" in k.provenance("s1").labels_of(ATTACKER)
        assert not k.evaluate(act("pre_tool", "send_money", args=PAY)).allowed
        k.end_session("s1", by="ops")  # the retry ends it
        assert k.evaluate(act("pre_tool", "send_money", args=PAY)).code == "session_ended"


def test_a_call_whose_count_fails_releases_nothing_and_keeps_its_handle(tmp_path: Path) -> None:
    flaky = FlakyStore(bastion.state.open_store(str(tmp_path / "state.db")))
    with bastion.Kernel.from_text(QUARANTINE_POLICY, catalog=QUARANTINE_CATALOG,
                                  state=flaky) as k:
        handle = _handle(k.evaluate(act("post_tool", "read_inbox", result="the hidden body")))
        flaky.fail.add("flow:n:")
        failed = k.evaluate(act("pre_tool", "archive", args={"item": handle}))
        assert (failed.allowed, failed.code) == (False, "internal_error")
        assert failed.args == {"item": handle}  # the content is not in the denied decision
        assert "archive" not in k.provenance("s1").full_history()
        retried = k.evaluate(act("pre_tool", "archive", args={"item": handle}))
        assert retried.allowed and retried.args == {"item": "the hidden body"}


def test_an_argument_labels_only_policy_on_another_worker_denies_an_ended_session(
        tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as a, \
            bastion.Kernel.from_text(ARGS_ONLY, catalog=CATALOG, state=state) as b:
        a.end_session("s1", by="ops")
        decision = b.evaluate(act("pre_tool", "send_money", args={"recipient": "me",
                                                                 "amount": 1}))
        assert (decision.allowed, decision.code) == (False, "session_ended")


def test_a_cedar_worker_denies_a_session_a_yaml_worker_ended(tmp_path: Path) -> None:
    pytest.importorskip("cedarpy")
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as a, \
            bastion.Kernel.from_text("permit(principal, action, resource);", format="cedar",
                                     catalog=CATALOG, state=state) as b:
        assert b.evaluate(act("pre_tool", "send_money", args=PAY)).allowed
        a.end_session("s1", by="ops")
        decision = b.evaluate(act("pre_tool", "send_money", args=PAY))
        assert (decision.allowed, decision.code) == (False, "session_ended")


def test_ended_comes_before_flow_incomplete(tmp_path: Path) -> None:
    state = str(tmp_path / "state.db")
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=state) as a, \
            bastion.Kernel.from_text(SEQUENCE, state=state) as b:
        assert a.evaluate(act("pre_tool", "download", args={})).allowed
        assert b.evaluate(act("pre_tool", "upload", args={})).code == "flow_incomplete"
        a.end_session("s1", by="ops")
        assert b.evaluate(act("pre_tool", "upload", args={})).code == "session_ended"


def test_no_decision_started_after_the_end_is_allowed_under_threads() -> None:
    store = bastion.state.open_store(None)
    kernels = [bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=store) for _ in range(2)]
    for k in kernels:
        read_injection(k)
    ended = threading.Event()
    busy = threading.Barrier(len(kernels) + 1)
    late: list[str] = []
    errors: list[BaseException] = []

    def run(k: bastion.Kernel) -> None:
        try:
            seen = 0
            for i in range(10_000):
                if i == 5:
                    busy.wait()  # deciding in the session when the end comes
                after = ended.is_set()
                if i % 3 == 0:
                    k.evaluate(act("post_tool", "get_balance", result={"balance": i}))
                d = k.evaluate(act("pre_tool", "send_money", args={"recipient": "me",
                                                                   "amount": 1}))
                if after:
                    late.append(d.code)
                    seen += 1
                    if seen >= 50:
                        return
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in kernels]
    for t in threads:
        t.start()
    busy.wait()
    kernels[0].end_session("s1", by="ops")
    ended.set()
    for t in threads:
        t.join()
    assert not errors
    assert len(late) == 50 * len(kernels)
    assert set(late) == {"session_ended"}
    for k in kernels:
        k.close()


def test_a_kernel_without_a_catalog_does_no_flow_store_work(tmp_path: Path) -> None:
    store = _Recording(bastion.state.open_store(str(tmp_path / "state.db")))
    with bastion.Kernel.from_text(PLAIN, state=store) as k:
        for i in range(50):
            assert k.evaluate(act("pre_tool", "download", args={"size": i})).allowed
        assert len(k._flow) == 0
    assert not [key for key in store.keys if key.startswith("flow:")]


def test_an_in_memory_store_counts_calls_without_store_access() -> None:
    store = _Recording(bastion.state.open_store(None))
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, state=store) as k:
        k.evaluate(act("input", args={"text": "pay 1 to bob"}))
        for _ in range(20):
            assert k.evaluate(act("pre_tool", "send_money", args={"recipient": "bob",
                                                                 "amount": 1})).allowed
        assert _flowfacts._LOCAL_COUNTS[store]["s1"][0] == 21  # one input and twenty calls
        k.end_session("s1", by="ops")
    assert not [key for key in store.keys if key.startswith("flow:")]
