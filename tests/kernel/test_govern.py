"""govern(): bound tool names, sync and async, redaction, result checks, outcomes, approvals."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest

from bastion import GovernanceDenied, Kernel, approval, govern
from bastion.audit import read_events

POLICY = """\
version: 1
rules:
  - id: mail
    tools: [send_email]
    when: host(args.to) == "example.com"
    effect: allow
  - id: mask
    tools: [send_email]
    effect: redact
    redact: [args.body]
  - id: reads
    tools: [read_file, fetch_async, lookup]
    effect: allow
  - id: pay
    tools: [pay]
    when: args.amount <= 100
    effect: allow
  - id: pay-big
    tools: [pay]
    when: args.amount > 100
    effect: require_approval
  - id: results
    stage: post_tool
    tools: ["*"]
    effect: allow
  - id: no-secrets-out
    stage: post_tool
    tools: [read_file]
    when: "string(result).contains('BEGIN PRIVATE KEY')"
    effect: deny
"""


@pytest.fixture
def kernel(tmp_path: Path) -> Any:
    with Kernel.from_text(POLICY, audit=tmp_path / "audit.db") as k:
        yield k


def test_name_is_bound_and_signature_preserved(kernel: Kernel) -> None:
    @govern(kernel)
    def send_email(to: str, body: str = "") -> dict[str, str]:
        """Send an e-mail."""
        return {"to": to, "body": body}

    assert send_email.__name__ == "send_email" and send_email.__doc__ == "Send an e-mail."
    assert inspect.signature(send_email) == inspect.signature(send_email.__wrapped__)
    assert list(inspect.signature(send_email).parameters) == ["to", "body"]
    assert send_email("a@example.com", body="secret") == {"to": "a@example.com",
                                                          "body": "[REDACTED]"}
    with pytest.raises(GovernanceDenied) as info:
        send_email("a@evil.com")
    assert info.value.decision.effect == "deny" and info.value.decision.tool == "send_email"


def test_caller_cannot_rename_the_tool(kernel: Kernel) -> None:
    @govern(kernel, name="send_email")
    def anything(to: str, tool: str = "", name: str = "", **kwargs: Any) -> str:
        return "sent"

    with pytest.raises(GovernanceDenied):
        anything("a@evil.com", tool="read_file", name="read_file", tool_name="read_file")
    assert anything("x@example.com", tool="read_file") == "sent"


def test_denied_function_never_runs(kernel: Kernel) -> None:
    ran = []

    @govern(kernel)
    def drop_everything() -> None:
        ran.append(True)

    with pytest.raises(GovernanceDenied):
        drop_everything()
    assert ran == []


def test_post_tool_denial_replaces_the_result_and_outcomes_are_recorded(
        kernel: Kernel, tmp_path: Path) -> None:
    @govern(kernel)
    def read_file(path: str) -> str:
        if path == "boom":
            raise OSError("no such file")
        return "-----BEGIN PRIVATE KEY-----" if path == "key.pem" else "hello"

    assert read_file("a.txt") == "hello"
    with pytest.raises(GovernanceDenied) as info:
        read_file("key.pem")
    assert info.value.decision.stage == "post_tool" and info.value.decision.effect == "deny"
    with pytest.raises(OSError):
        read_file("boom")
    kernel.audit.flush()
    outcomes = [e for e in read_events(tmp_path / "audit.db") if e["kind"] == "outcome"]
    assert [o["status"] for o in outcomes] == ["succeeded", "failed", "exception"]
    decisions = {e["id"] for e in read_events(tmp_path / "audit.db") if e["kind"] == "decision"}
    assert all(o["decision_id"] in decisions for o in outcomes)
    assert "OSError" in outcomes[2]["error"]


def test_async_functions(kernel: Kernel) -> None:
    @govern(kernel)
    async def fetch_async(url: str) -> str:
        await asyncio.sleep(0)
        return f"got {url}"

    @govern(kernel)
    async def drop_async() -> str:
        return "dropped"

    assert inspect.iscoroutinefunction(fetch_async)
    assert asyncio.run(fetch_async("u")) == "got u"
    with pytest.raises(GovernanceDenied):
        asyncio.run(drop_async())


def test_approval_round_trip(kernel: Kernel) -> None:
    @govern(kernel)
    def pay(amount: int, to: str) -> str:
        return f"paid {amount} to {to}"

    assert pay(50, "v") == "paid 50 to v"
    with pytest.raises(GovernanceDenied) as info:
        pay(500, "v")
    aid = info.value.decision.approval_id
    assert info.value.decision.effect == "require_approval" and aid
    kernel.approve(aid, by="alice")
    with approval(aid), pytest.raises(GovernanceDenied):
        pay(501, "v")  # a different call cannot use the approval
    with approval(aid):
        assert pay(500, "v") == "paid 500 to v"
    with approval(aid), pytest.raises(GovernanceDenied):
        pay(500, "v")  # used once


def test_methods_varargs_and_agent_sources(kernel: Kernel) -> None:
    seen: list[dict[str, Any]] = []

    class Store:
        @govern(kernel, agent=lambda: {"id": "agent-7"}, session={"id": "s-1"})
        def lookup(self, key: str, *rest: str, **opts: Any) -> str:
            seen.append({"key": key, "rest": rest, "opts": opts})
            return key

    assert Store().lookup("k", "a", "b", flag=True) == "k"
    assert seen == [{"key": "k", "rest": ("a", "b"), "opts": {"flag": True}}]
    kernel.audit.flush()
    events = [e for e in read_events(kernel.audit.path) if e.get("tool") == "lookup"
              and e["kind"] == "decision" and e["stage"] == "pre_tool"]
    assert events[-1]["args"] == {"key": "k", "rest": ["a", "b"], "flag": True}
    assert events[-1]["agent"] == "agent-7" and events[-1]["session"] == "s-1"
