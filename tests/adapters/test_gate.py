"""``ToolGate``: the translation every framework adapter shares, without any framework."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import bastion
from bastion import GovernanceDenied
from bastion.adapters import RunStopped, ToolGate, denial_message, parse_args
from bastion.audit import read_events

POLICY = """
version: 1
default: deny
rules:
  - {id: search-ok, tools: [search], effect: allow}
  - {id: mail-redact, tools: [send_mail], effect: redact, redact: [args.password]}
  - {id: mail-ok, tools: [send_mail], effect: allow}
  - {id: pay-approval, tools: [pay], effect: require_approval}
  - id: no-secrets-out
    stage: post_tool
    when: 'type(result) == string && result.contains("SECRET")'
    effect: deny
    message: the result holds a secret
  - {id: results-ok, stage: post_tool, effect: allow}
"""


@pytest.fixture
def kernel(tmp_path: Path) -> Any:
    with bastion.Kernel.from_text(POLICY, audit=tmp_path / "audit.db") as k:
        yield k


@pytest.fixture
def gate(kernel: bastion.Kernel) -> ToolGate:
    return ToolGate(kernel, agent={"id": "agent-1"}, session={"id": "s1"})


def test_allowed_call_runs_with_parsed_json_arguments(gate: ToolGate) -> None:
    pre = gate.before("search", '{"q": "weather"}')
    assert pre.run and pre.args == {"q": "weather"} and pre.message == ""
    assert pre.decision.agent == "agent-1" and pre.decision.session == "s1"
    post = gate.after(pre, "sunny")
    assert post.allowed and post.result == "sunny"


def test_denied_call_carries_a_message_for_the_model(gate: ToolGate) -> None:
    pre = gate.before("drop_table", {"name": "users"})
    assert not pre.run and not pre.stop and pre.pending is None and pre.args == {}
    assert pre.message.startswith("The tool call 'drop_table' was denied by policy: ")
    assert pre.decision.id in pre.message


def test_redaction_reaches_the_tool(gate: ToolGate) -> None:
    pre = gate.before("send_mail", {"to": "a@b.example", "password": "hunter2"})
    assert pre.run and pre.args == {"to": "a@b.example", "password": "[REDACTED]"}


def test_post_call_denial_replaces_the_result(gate: ToolGate, kernel: bastion.Kernel,
                                              tmp_path: Path) -> None:
    pre = gate.before("search", {})
    post = gate.after(pre, "the SECRET plans")
    assert not post.allowed and "SECRET" not in post.result
    assert post.result == post.message and "the result holds a secret" in post.message
    kernel.close()
    outcomes = [e for e in read_events(tmp_path / "audit.db") if e.get("kind") == "outcome"]
    assert [o["status"] for o in outcomes] == ["failed"]


@pytest.mark.parametrize("args", ["[1, 2]", "{bad json", 42, object()])
def test_unusable_arguments_deny_and_are_audited(gate: ToolGate, kernel: bastion.Kernel,
                                                 tmp_path: Path, args: Any) -> None:
    pre = gate.before("search", args)
    assert not pre.run and pre.decision.code == "internal_error"
    assert "bastion could not decide it" in pre.message
    kernel.close()
    events = [e for e in read_events(tmp_path / "audit.db") if e.get("kind") == "decision"]
    assert events and events[-1]["effect"] == "deny"
    assert events[-1]["code"] == "internal_error"


def test_an_exception_in_a_fact_source_denies(kernel: bastion.Kernel) -> None:
    def broken() -> dict[str, str]:
        raise RuntimeError("no session store")

    gate = ToolGate(kernel, session=broken)
    pre = gate.before("search", {})
    assert not pre.run and "RuntimeError: no session store" in pre.message


def test_an_exception_in_the_kernel_denies_before_and_after(kernel: bastion.Kernel) -> None:
    gate = ToolGate(kernel, session={"id": "s"})
    pre = gate.before("search", {})

    class Broken:
        checks_results = True
        audit = None

        def evaluate(self, action: bastion.Action) -> bastion.Decision:
            raise RuntimeError("kernel down")

        def record_outcome(self, *a: Any, **k: Any) -> None:
            pass

    gate.kernel = Broken()  # type: ignore[assignment]
    assert not gate.before("search", {}).run
    post = gate.after(pre, "fine")
    assert not post.allowed and "kernel down" in post.result


def test_approval_pending_then_granted_lets_the_retry_run(gate: ToolGate,
                                                          kernel: bastion.Kernel) -> None:
    pre = gate.before("pay", {"amount": 5})
    assert not pre.run and pre.pending is not None and pre.pending in pre.message
    assert "needs human approval" in pre.message
    kernel.approve(pre.pending, by="alice")
    retry = gate.before("pay", {"amount": 5})
    assert retry.run and retry.decision.code == "approval"
    again = gate.before("pay", {"amount": 5})  # single use: a third call waits again
    assert not again.run and again.pending not in (None, pre.pending)


def test_a_refused_approval_is_forgotten_so_the_next_retry_asks_anew(
        gate: ToolGate, kernel: bastion.Kernel) -> None:
    pre = gate.before("pay", {"amount": 7})
    assert pre.pending is not None
    kernel.refuse(pre.pending, by="bob")
    refused = gate.before("pay", {"amount": 7})
    assert not refused.run and refused.decision.effect == "deny"
    fresh = gate.before("pay", {"amount": 7})
    assert fresh.pending is not None and fresh.pending != pre.pending


def test_an_approval_is_bound_to_its_arguments(gate: ToolGate, kernel: bastion.Kernel) -> None:
    pre = gate.before("pay", {"amount": 5})
    assert pre.pending is not None
    kernel.approve(pre.pending, by="alice")
    other = gate.before("pay", {"amount": 5000})
    assert not other.run and other.pending is not None


def test_kill_switch_stops_the_run(gate: ToolGate, kernel: bastion.Kernel) -> None:
    kernel.state.set_flag("kill:agent:agent-1", "incident 42")
    pre = gate.before("search", {})
    assert not pre.run and pre.stop and pre.decision.code == "kill_switch"
    assert pre.message.startswith("The run was stopped by bastion")
    with pytest.raises(RunStopped):
        gate.check("search", {})


def test_check_raises_governance_denied_and_returns_allowed(gate: ToolGate) -> None:
    assert gate.check("search", {"q": 1}).args == {"q": 1}
    with pytest.raises(GovernanceDenied) as err:
        gate.check("drop_table", {})
    assert not isinstance(err.value, RunStopped)
    pre = gate.check("search", {})
    assert gate.check_result(pre, "ok") == "ok"
    with pytest.raises(GovernanceDenied):
        gate.check_result(gate.check("search", {}), "SECRET")


def test_failed_records_an_exception_outcome(gate: ToolGate, kernel: bastion.Kernel,
                                             tmp_path: Path) -> None:
    pre = gate.before("search", {})
    gate.failed(pre, ValueError("boom"))
    kernel.close()
    outcome = [e for e in read_events(tmp_path / "audit.db") if e.get("kind") == "outcome"]
    assert outcome[-1]["status"] == "exception" and "boom" in outcome[-1]["error"]


def test_per_call_overrides_win_over_the_gate_options(gate: ToolGate) -> None:
    pre = gate.before("search", {}, session={"id": "thread-9"}, agent=lambda: {"id": "a2"})
    assert pre.decision.session == "thread-9" and pre.decision.agent == "a2"


def test_async_paths(kernel: bastion.Kernel) -> None:
    gate = ToolGate(kernel, session={"id": "s"})

    async def run() -> None:
        pre = await gate.abefore("search", {"q": 1})
        assert pre.run
        assert (await gate.aafter(pre, "x")).result == "x"
        denied = await gate.aafter(await gate.abefore("search", {}), "SECRET")
        assert not denied.allowed
        assert not (await gate.abefore("drop", {})).run
        with pytest.raises(GovernanceDenied):
            await gate.acheck("drop", {})

    asyncio.run(run())


def test_parse_args_and_denial_message() -> None:
    assert parse_args(None) == {} and parse_args("  ") == {} and parse_args(b'{"a": 1}') == {
        "a": 1}
    with pytest.raises(ValueError):
        parse_args('"text"')
    with bastion.Kernel.from_text("version: 1\nrules: []\n") as k:
        d = k.evaluate(bastion.Action(tool="t", args={}))
    assert denial_message(d) == (f"The tool call 't' was denied by policy: "
                                 f"{'; '.join(d.reasons)}. Decision {d.id}.")


def test_a_retry_before_the_approval_is_granted_keeps_waiting_for_it(
        gate: ToolGate, kernel: bastion.Kernel) -> None:
    pre = gate.before("pay", {"amount": 9})
    early = gate.before("pay", {"amount": 9})
    assert not early.run and "is not granted" in early.message
    assert pre.pending is not None
    kernel.approve(pre.pending, by="alice")
    assert gate.before("pay", {"amount": 9}).run
