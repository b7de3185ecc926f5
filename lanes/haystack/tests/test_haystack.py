"""The Haystack adapter on a real ``Agent`` driven by a scripted chat generator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from haystack import component
from haystack.components.agents import Agent
from haystack.dataclasses import ChatMessage, ToolCall
from haystack.tools import Tool

import bastion
from bastion.adapters.haystack import hooks
from bastion.audit import read_events

POLICY = """
version: 1
name: haystack-lane
default: deny
rules:
  - id: allow-tools
    tools: [lookup, send_email, read_file, transfer]
    effect: allow
  - id: no-delete
    tools: [delete_file]
    effect: deny
    message: deleting files is blocked
  - id: mask-body
    tools: [send_email]
    effect: redact
    redact: [args.body]
  - id: big-transfer
    tools: [transfer]
    when: args.amount > 1000
    effect: require_approval
  - id: results
    stage: post_tool
    effect: allow
  - id: no-secrets
    stage: post_tool
    tools: [read_file]
    when: result.contains("SECRET")
    effect: deny
    message: the result holds a secret
"""


@component
class ScriptedChat:
    """Replies with one scripted tool call per turn, then with text; records what it saw."""

    def __init__(self, calls: list[Any]):
        self.calls = list(calls)
        self.seen: list[list[ChatMessage]] = []

    @component.output_types(replies=list[ChatMessage])
    def run(self, messages: list[ChatMessage], tools: Any = None) -> dict[str, Any]:
        self.seen.append(list(messages))
        turn = len(self.seen) - 1
        if turn < len(self.calls):
            step = self.calls[turn]
            batch = step if isinstance(step, list) else [step]
            calls = [ToolCall(tool_name=name, arguments=args, id=f"call-{turn}-{n}")
                     for n, (name, args) in enumerate(batch)]
            return {"replies": [ChatMessage.from_assistant(tool_calls=calls)]}
        return {"replies": [ChatMessage.from_assistant("done")]}

    def tool_results(self, turn: int) -> list[str]:
        """The tool results the model saw at the start of ``turn``."""
        return [str(m.tool_call_result.result) for m in self.seen[turn]
                if m.tool_call_result is not None]


class Tools:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def make(self, name: str, result: str = "ok") -> Tool:
        def fn(**kwargs: Any) -> str:
            self.calls.append((name, kwargs))
            return result
        return Tool(name=name, description=f"the {name} tool", function=fn,
                    parameters={"type": "object", "properties": {}})

    def all(self) -> list[Tool]:
        return [self.make("lookup", "42 items"), self.make("send_email", "sent"),
                self.make("delete_file", "deleted"), self.make("transfer", "moved"),
                self.make("read_file", "the key is SECRET-123")]


def run(kernel: bastion.Kernel, calls: list[Any], *, tools: Tools,
        use_async: bool = False, **opts: Any) -> tuple[dict[str, Any], ScriptedChat]:
    chat = ScriptedChat(calls)
    agent = Agent(chat_generator=chat, tools=tools.all(),
                  hooks=hooks(kernel, session=opts.pop("session", {"id": "s1"}), **opts))
    msgs = [ChatMessage.from_user("go")]
    if use_async:
        out = asyncio.run(agent.run_async(messages=msgs, hook_context={"session_id": "h1"}))
    else:
        out = agent.run(messages=msgs, hook_context={"session_id": "h1"})
    return out, chat


@pytest.fixture
def kernel(tmp_path: Path) -> Any:
    with bastion.Kernel.from_text(POLICY, audit=tmp_path / "audit.db") as k:
        yield k


@pytest.mark.parametrize("use_async", [False, True])
def test_allowed_tool_runs_and_model_sees_result(kernel: Any, use_async: bool) -> None:
    tools = Tools()
    out, chat = run(kernel, [("lookup", {"q": "x"})], tools=tools, use_async=use_async)
    assert tools.calls == [("lookup", {"q": "x"})]
    assert chat.tool_results(1) == ["42 items"]
    assert out["exit_reason"] == "text"
    kernel.audit.flush()
    events = list(read_events(kernel.audit.path))
    assert [e["effect"] for e in events if e["kind"] == "decision" and e["tool"] == "lookup"] \
        == ["allow", "allow"]  # pre_tool and post_tool
    assert [e["status"] for e in events if e["kind"] == "outcome"] == ["succeeded"]


@pytest.mark.parametrize("use_async", [False, True])
def test_denied_tool_never_runs_and_model_sees_why(kernel: Any, use_async: bool) -> None:
    tools = Tools()
    _, chat = run(kernel, [("delete_file", {"path": "/etc"})], tools=tools, use_async=use_async)
    assert tools.calls == []
    [seen] = chat.tool_results(1)
    assert "deleting files is blocked" in seen and "denied by policy" in seen


@pytest.mark.parametrize("use_async", [False, True])
def test_redaction_reaches_the_tool(kernel: Any, use_async: bool) -> None:
    tools = Tools()
    run(kernel, [("send_email", {"to": "a@example.com", "body": "card 4111"})], tools=tools,
        use_async=use_async)
    assert tools.calls == [("send_email", {"to": "a@example.com", "body": "[REDACTED]"})]


@pytest.mark.parametrize("use_async", [False, True])
def test_post_tool_deny_replaces_result(kernel: Any, use_async: bool) -> None:
    tools = Tools()
    out, chat = run(kernel, [("read_file", {"path": "k"})], tools=tools, use_async=use_async)
    assert tools.calls == [("read_file", {"path": "k"})]  # it ran ...
    [seen] = chat.tool_results(1)  # ... but the model never saw its result
    assert "SECRET" not in seen and "the result holds a secret" in seen
    assert all("SECRET-123" not in str(m.tool_call_result.result)
               for m in out["messages"] if m.tool_call_result is not None)
    kernel.audit.flush()
    assert [e["status"] for e in read_events(kernel.audit.path)
            if e["kind"] == "outcome"] == ["failed"]


@pytest.mark.parametrize("use_async", [False, True])
def test_parallel_calls_are_decided_one_by_one(kernel: Any, use_async: bool) -> None:
    tools = Tools()
    _, chat = run(kernel, [[("delete_file", {"path": "/"}), ("read_file", {"path": "k"}),
                            ("lookup", {"q": "y"})]], tools=tools, use_async=use_async)
    assert sorted(tools.calls) == [("lookup", {"q": "y"}), ("read_file", {"path": "k"})]
    seen = chat.tool_results(1)
    assert "42 items" in seen and not any("SECRET" in r for r in seen)
    assert sum("denied" in r for r in seen) == 2  # delete_file before, read_file after


class BrokenKernel(bastion.Kernel):
    def evaluate(self, action: Any) -> Any:
        raise RuntimeError("boom")

    async def aevaluate(self, action: Any) -> Any:
        raise RuntimeError("boom")


@pytest.mark.parametrize("use_async", [False, True])
def test_kernel_error_denies(use_async: bool) -> None:
    tools = Tools()
    with BrokenKernel.from_text(POLICY) as k:
        _, chat = run(k, [("lookup", {})], tools=tools, use_async=use_async)
    assert tools.calls == []
    assert "could not decide" in chat.tool_results(1)[0]


def test_agent_callable_error_denies(kernel: Any) -> None:
    def agent() -> dict[str, Any]:
        raise KeyError("no agent")
    tools = Tools()
    _, chat = run(kernel, [("lookup", {})], tools=tools, agent=agent)
    assert tools.calls == [] and "KeyError" in chat.tool_results(1)[0]


def test_session_callable_gets_hook_context(kernel: Any) -> None:
    tools = Tools()
    run(kernel, [("lookup", {})], tools=tools,
        session_from=lambda ctx: {"id": ctx["session_id"]})
    kernel.audit.flush()
    assert {e["session"] for e in read_events(kernel.audit.path)
            if e["kind"] == "decision"} == {"h1"}


@pytest.mark.parametrize("use_async", [False, True])
def test_kill_switch_stops_the_run(kernel: Any, use_async: bool) -> None:
    kernel.state.set_flag("kill:all", "test")
    tools = Tools()
    out, chat = run(kernel, [("lookup", {}), ("lookup", {})], tools=tools, use_async=use_async)
    assert tools.calls == []
    assert out["exit_reason"] == "bastion:kill_switch"
    assert len(chat.seen) == 1  # no further model turn after the stop
    assert "stopped by bastion" in out["messages"][-1].tool_call_result.result


def test_approval_denies_then_retry_runs(kernel: Any) -> None:
    tools = Tools()
    big = ("transfer", {"amount": 5000})
    chat = ScriptedChat([big])
    agent = Agent(chat_generator=chat, tools=tools.all(), hooks=hooks(kernel, session={"id": "s1"}))
    agent.run(messages=[ChatMessage.from_user("go")])
    assert tools.calls == []
    [seen] = chat.tool_results(1)
    assert "needs human approval" in seen
    approval_id = seen.split("Approval id: ")[1].split(".")[0]

    chat.calls, chat.seen = [big], []
    agent.run(messages=[ChatMessage.from_user("go")])  # not granted yet: still denied
    assert tools.calls == [] and "is not granted" in chat.tool_results(1)[0]
    kernel.approve(approval_id, by="alice")
    chat.calls, chat.seen = [big], []
    agent.run(messages=[ChatMessage.from_user("go")])  # the same call, retried, now runs
    assert tools.calls == [("transfer", {"amount": 5000})]
    assert chat.tool_results(1) == ["moved"]


def test_example_runs() -> None:
    root = Path(os.environ.get("BASTION_ROOT", Path(__file__).parents[3]))
    out = subprocess.run([sys.executable, str(root / "examples" / "haystack_example.py")],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "lookup ran" in out and "delete_file denied" in out and "[REDACTED]" in out
