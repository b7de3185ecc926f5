"""``ToolGate`` under attack: fail-closed paths, approval memory across agents and sessions,
post-call denials that must not be skipped, ``after`` with a ``Pre`` that did not run, and one
gate shared by threads and tasks."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import bastion
from bastion.adapters import ToolGate
from bastion.adapters._core import MAX_WAITING
from bastion.policy import parse_policy

POLICY = """
version: 1
default: deny
rules:
  - {id: search-ok, tools: [search, read_file], effect: allow}
  - {id: pay-approval, tools: [pay], effect: require_approval}
  - id: tenant-results
    stage: post_tool
    when: '"tenant" in context && context.tenant == "restricted"'
    effect: deny
    message: results are withheld for this tenant
  - id: no-secrets-out
    stage: post_tool
    when: 'type(result) == string && result.contains("SECRET")'
    effect: deny
  - {id: results-ok, stage: post_tool, effect: allow}
"""
CATALOG = "version: 1\ntools:\n  read_file: {class: read, side_effects: false, " \
          "result: {handling: quarantine}}\n"


class FlakyAudit:
    """An audit sink that can be made to fail (disk full)."""

    durable = False

    def __init__(self) -> None:
        self.fail = False
        self.events: list[Any] = []

    def append(self, event: Any) -> None:
        if self.fail:
            raise OSError("disk full")
        self.events.append(event)

    def close(self) -> None:
        pass


@pytest.fixture
def kernel() -> Any:
    with bastion.Kernel.from_text(POLICY, catalog=CATALOG) as k:
        yield k


def _flow_only_kernel() -> bastion.Kernel:
    """A kernel that tracks flow but has no post_tool rules (results go to label_result)."""
    policy = "version: 1\ndefault: deny\nrules:\n  - {id: ok, tools: [read_file], effect: allow}\n"
    return bastion.Kernel.from_text(policy, catalog=CATALOG)


# -- after() with a Pre that did not run ---------------------------------------------------------
@pytest.mark.parametrize("flow_only", [False, True])
def test_after_never_shows_the_result_of_a_call_that_was_denied(
        kernel: bastion.Kernel, flow_only: bool) -> None:
    k = _flow_only_kernel() if flow_only else kernel
    gate = ToolGate(k, agent={"id": "a"}, session={"id": "s"})
    pre = gate.before("drop_table", {})
    assert not pre.run
    post = gate.after(pre, "raw result of a call that should never have run")
    assert not post.allowed and "raw result" not in str(post.result)
    assert post.result == pre.message and post.decision is pre.decision
    post = asyncio.run(gate.aafter(pre, "raw result"))
    assert not post.allowed and post.result == pre.message


def test_after_with_a_pre_from_a_broken_before_is_denied(kernel: bastion.Kernel) -> None:
    gate = ToolGate(kernel, agent={"id": "a"}, session={"id": "s"})
    pre = gate.before("read_file", "[not, an, object]")
    assert not pre.run and pre.decision.code == "internal_error"
    post = gate.after(pre, "content")
    assert not post.allowed and post.result != "content"


def test_a_quarantined_result_is_not_leaked_through_a_denied_pre() -> None:
    with _flow_only_kernel() as k:
        gate = ToolGate(k, agent={"id": "a"}, session={"id": "s"})
        denied = gate.before("read_inbox", {})
        assert "the hidden text" not in str(gate.after(denied, "the hidden text").result)


# -- fail closed ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flow_only", [False, True])
def test_after_never_raises_when_the_audit_log_breaks(flow_only: bool) -> None:
    audit = FlakyAudit()
    policy = parse_policy(POLICY if not flow_only else
                          "version: 1\nrules:\n  - {id: ok, tools: [search], effect: allow}\n")
    k = bastion.Kernel(policy, audit=audit)
    gate = ToolGate(k, agent={"id": "a"}, session={"id": "s"})
    pre = gate.before("search", {"q": 1})
    assert pre.run
    audit.fail = True  # the outcome (and the post_tool event) can no longer be written
    post = gate.after(pre, "SECRET-free result")  # raised OSError before: a swallowing
    assert not post.allowed  # framework then passed the unchecked result on
    assert post.decision is not None and post.decision.code == "internal_error"
    assert not asyncio.run(gate.aafter(pre, "x")).allowed


def test_a_post_call_denial_is_applied_and_recorded(kernel: bastion.Kernel) -> None:
    gate = ToolGate(kernel, agent={"id": "a"}, session={"id": "s"})
    assert gate.after(gate.before("search", {}), "nothing to hide").allowed
    post = gate.after(gate.before("search", {}), "the SECRET is 42")
    assert not post.allowed and "SECRET is 42" not in post.result  # ids may hold "42"
    assert post.decision is not None and post.decision.rule_ids == ("no-secrets-out",)
    with pytest.raises(bastion.GovernanceDenied):
        gate.check_result(gate.before("search", {}), "the SECRET is 42")


def test_a_per_call_context_also_decides_the_result(kernel: bastion.Kernel) -> None:
    """A post_tool rule over ``context`` saw the gate's default context, not the one the call
    was decided with: the tenant's denial was skipped."""
    gate = ToolGate(kernel, agent={"id": "a"}, session={"id": "s"}, context={"tenant": "open"})
    pre = gate.before("search", {}, context={"tenant": "restricted"})
    assert pre.run
    post = gate.after(pre, "tenant data")
    assert not post.allowed and post.decision is not None
    assert post.decision.rule_ids == ("tenant-results",)
    assert gate.after(gate.before("search", {}), "tenant data").allowed


# -- approval memory -----------------------------------------------------------------------------
def test_an_approval_is_never_presented_for_another_agent_or_session(
        kernel: bastion.Kernel) -> None:
    who = {"agent": "a", "session": "s"}
    gate = ToolGate(kernel, agent=lambda: {"id": who["agent"]},
                    session=lambda: {"id": who["session"]})
    pre = gate.before("pay", {"amount": 10})
    assert pre.pending is not None
    kernel.approve(pre.pending, by="alice")
    who["agent"] = "b"
    assert not gate.before("pay", {"amount": 10}).run
    who.update(agent="a", session="other")
    assert not gate.before("pay", {"amount": 10}).run
    who["session"] = "s"
    assert not gate.before("pay", {"amount": 11}).run  # other arguments: another digest
    ran = gate.before("pay", {"amount": 10})
    assert ran.run and ran.decision.approval_id == pre.pending
    assert not gate.before("pay", {"amount": 10}).run  # single use


def test_a_granted_approval_survives_a_deny_for_another_reason(kernel: bastion.Kernel) -> None:
    gate = ToolGate(kernel, agent={"id": "a"}, session={"id": "s"})
    pre = gate.before("pay", {"amount": 10})
    assert pre.pending is not None
    kernel.approve(pre.pending, by="alice")
    kernel.state.set_flag("kill:tool:pay", "incident")
    stopped = gate.before("pay", {"amount": 10})
    assert not stopped.run and stopped.stop
    kernel.state.clear_flag("kill:tool:pay")
    retry = gate.before("pay", {"amount": 10})  # asked for a new approval before
    assert retry.run and retry.decision.approval_id == pre.pending


def test_approval_memory_is_bounded(kernel: bastion.Kernel) -> None:
    gate = ToolGate(kernel, agent={"id": "a"}, session={"id": "s"})
    first = gate.before("pay", {"amount": -1}).pending
    for i in range(MAX_WAITING + 10):
        assert gate.before("pay", {"amount": i}).pending is not None
    assert len(gate._approvals) == MAX_WAITING
    assert first not in gate._approvals.values()  # oldest forgotten first


# -- one gate, many threads and tasks ------------------------------------------------------------
def test_an_approval_runs_once_when_threads_retry_it_together(kernel: bastion.Kernel) -> None:
    gate = ToolGate(kernel, agent={"id": "a"}, session={"id": "s"})
    pending = gate.before("pay", {"amount": 10}).pending
    assert pending is not None
    kernel.approve(pending, by="alice")
    start = threading.Barrier(8)
    ran: list[bool] = []

    def retry() -> None:
        start.wait()
        ran.append(gate.before("pay", {"amount": 10}).run)

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(ran) == [False] * 7 + [True]


def test_an_approval_runs_once_when_tasks_retry_it_together(kernel: bastion.Kernel) -> None:
    gate = ToolGate(kernel, agent={"id": "a"}, session={"id": "s"})
    pending = gate.before("pay", {"amount": 10}).pending
    assert pending is not None
    kernel.approve(pending, by="alice")

    async def main() -> list[bool]:
        pres = await asyncio.gather(*(gate.abefore("pay", {"amount": 10}) for _ in range(8)))
        return [p.run for p in pres]

    assert sorted(asyncio.run(main())) == [False] * 7 + [True]


def test_threads_sharing_a_gate_keep_their_sessions_handles_apart(
        kernel: bastion.Kernel) -> None:
    errors: list[str] = []

    def session(n: int) -> None:
        try:
            run(n)
        except Exception as exc:  # a thread's exception would otherwise be lost
            errors.append(f"{n}: {type(exc).__name__}: {exc}")

    def run(n: int) -> None:
        gate = ToolGate(kernel, agent={"id": "a"}, session={"id": f"t{n}"})
        for i in range(20):
            shown = gate.after(gate.before("read_file", {}), f"content {n}-{i}").result
            handle = shown.split("handle ")[1].split(".")[0]
            pre = gate.before("search", {"q": handle})
            if not pre.run or pre.args != {"q": f"content {n}-{i}"}:
                errors.append(f"{n}-{i}: {pre.args}")
            other = ToolGate(kernel, agent={"id": "a"}, session={"id": f"x{n}"})
            if other.before("search", {"q": handle}).run:
                errors.append(f"{n}-{i}: released in another session")

    threads = [threading.Thread(target=session, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
