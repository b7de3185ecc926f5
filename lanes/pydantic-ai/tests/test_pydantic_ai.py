"""bastion.adapters.pydantic_ai on a real PydanticAI agent driven by a FunctionModel."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.toolsets import FunctionToolset

from bastion import Kernel
from bastion.adapters import RunStopped
from bastion.adapters.pydantic_ai import Governed
from bastion.audit import read_events

ROOT = Path(os.environ.get("BASTION_ROOT", Path(__file__).resolve().parents[3]))

POLICY = """\
version: 1
rules:
  - id: reads
    tools: [read_file, lookup]
    effect: allow
  - id: mail
    tools: [send_email]
    effect: allow
  - id: mask-body
    tools: [send_email]
    effect: redact
    redact: [args.body]
  - id: no-drop
    tools: ["drop_*"]
    effect: deny
    message: destructive operations are blocked
  - id: pay
    tools: [pay]
    effect: require_approval
  - id: results
    stage: post_tool
    tools: ["*"]
    effect: allow
  - id: no-keys-out
    stage: post_tool
    tools: [read_file]
    when: "string(result).contains('PRIVATE KEY')"
    effect: deny
"""


class Script:
    """A scripted model: the first turn makes ``calls``, the next answers with what it saw."""

    def __init__(self, *calls: tuple[str, dict[str, Any]]):
        self.calls = calls
        self.turns: list[list[ModelMessage]] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.turns.append(list(messages))
        if len(self.turns) == 1:
            return ModelResponse(parts=[ToolCallPart(name, args) for name, args in self.calls])
        return ModelResponse(parts=[TextPart("; ".join(str(r.content) for r in self.returns()))])

    def returns(self) -> list[ToolReturnPart]:
        """The tool returns the model received in its latest turn."""
        last = self.turns[-1][-1]
        assert isinstance(last, ModelRequest)
        return [p for p in last.parts if isinstance(p, ToolReturnPart)]


class Tools:
    """Tools that count their calls."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []

    def attach(self, agent: Agent[Any, Any]) -> None:
        @agent.tool_plain
        def read_file(path: str) -> str:
            self.ran.append(("read_file", {"path": path}))
            return "-----BEGIN PRIVATE KEY-----" if path.endswith(".pem") else f"text of {path}"

        @agent.tool_plain
        async def send_email(to: str, body: str) -> str:
            self.ran.append(("send_email", {"to": to, "body": body}))
            return f"sent to {to}"

        @agent.tool_plain
        def drop_table(name: str) -> str:
            self.ran.append(("drop_table", {"name": name}))
            return "dropped"

        @agent.tool_plain
        def pay(amount: int) -> str:
            self.ran.append(("pay", {"amount": amount}))
            return f"paid {amount}"

        @agent.tool_plain
        def lookup(key: str) -> str:
            self.ran.append(("lookup", {"key": key}))
            if key == "boom":
                raise LookupError("no such key")
            return key


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    with Kernel.from_text(POLICY, audit=tmp_path / "audit.db") as k:
        yield k


def build(kernel: Kernel, script: Script, **options: Any) -> tuple[Agent[Any, Any], Tools]:
    output: Any = [str, DeferredToolRequests]
    agent = Agent(FunctionModel(script), output_type=output,
                  capabilities=[Governed(kernel, **options)])
    tools = Tools()
    tools.attach(agent)
    return agent, tools


def run(agent: Agent[Any, Any], mode: str, **kwargs: Any) -> Any:
    if mode == "sync":
        return agent.run_sync(**kwargs)
    return asyncio.run(agent.run(**kwargs))


def events(kernel: Kernel) -> list[dict[str, Any]]:
    kernel.audit.flush()
    return list(read_events(kernel.audit.path))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_allowed_tool_runs_and_its_outcome_is_audited(kernel: Kernel, mode: str) -> None:
    script = Script(("read_file", {"path": "notes.txt"}))
    agent, tools = build(kernel, script, agent={"id": "agent-1"}, session={"id": "s-1"})
    result = run(agent, mode, user_prompt="read my notes")
    assert tools.ran == [("read_file", {"path": "notes.txt"})]
    assert [r.content for r in script.returns()] == ["text of notes.txt"]
    assert result.output == "text of notes.txt"
    log = events(kernel)
    pre = [e for e in log if e["kind"] == "decision" and e["stage"] == "pre_tool"]
    assert [(e["tool"], e["effect"], e["agent"], e["session"]) for e in pre] == [
        ("read_file", "allow", "agent-1", "s-1")]
    assert [e["status"] for e in log if e["kind"] == "outcome"] == ["succeeded"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_denied_tool_never_runs_and_the_model_sees_why(kernel: Kernel, mode: str) -> None:
    script = Script(("drop_table", {"name": "users"}), ("read_file", {"path": "a.txt"}))
    agent, tools = build(kernel, script)
    run(agent, mode, user_prompt="clean up")
    assert tools.ran == [("read_file", {"path": "a.txt"})]
    denial, allowed = script.returns()
    assert denial.tool_name == "drop_table"
    assert "denied by policy: destructive operations are blocked" in str(denial.content)
    assert allowed.content == "text of a.txt"
    assert any(e["kind"] == "decision" and e["tool"] == "drop_table" and e["effect"] == "deny"
               for e in events(kernel))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_redaction_reaches_the_tool(kernel: Kernel, mode: str) -> None:
    script = Script(("send_email", {"to": "a@example.com", "body": "card 4111"}))
    agent, tools = build(kernel, script)
    run(agent, mode, user_prompt="mail it")
    assert tools.ran == [("send_email", {"to": "a@example.com", "body": "[REDACTED]"})]
    # the model's own call is left as it made it; only the tool saw the redaction
    call = script.turns[-1][-2].parts[0]
    assert isinstance(call, ToolCallPart) and call.args_as_dict()["body"] == "card 4111"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_post_call_denial_replaces_the_result(kernel: Kernel, mode: str) -> None:
    script = Script(("read_file", {"path": "id.pem"}))
    agent, tools = build(kernel, script)
    result = run(agent, mode, user_prompt="read the key")
    assert tools.ran == [("read_file", {"path": "id.pem"})]  # it ran; its result is withheld
    (seen,) = script.returns()
    assert "The result of tool 'read_file' was denied by policy" in str(seen.content)
    assert "PRIVATE KEY" not in str(seen.content) and "PRIVATE KEY" not in result.output
    assert [e["status"] for e in events(kernel) if e["kind"] == "outcome"] == ["failed"]


class BrokenKernel(Kernel):
    def evaluate(self, action: Any) -> Any:
        raise RuntimeError("policy store unreachable")

    async def aevaluate(self, action: Any) -> Any:
        raise RuntimeError("policy store unreachable")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_error_in_the_hook_denies(tmp_path: Path, mode: str) -> None:
    with BrokenKernel.from_text(POLICY, audit=tmp_path / "audit.db") as broken:
        script = Script(("read_file", {"path": "a.txt"}))
        agent, tools = build(broken, script)
        run(agent, mode, user_prompt="read")
        assert tools.ran == []
        (seen,) = script.returns()
        assert "bastion could not decide it" in str(seen.content)
        assert "policy store unreachable" in str(seen.content)
        decisions = [e for e in events(broken) if e["kind"] == "decision"]
        assert decisions and decisions[-1]["effect"] == "deny"


def test_an_agent_source_that_raises_denies(kernel: Kernel) -> None:
    def agent_facts() -> dict[str, Any]:
        raise KeyError("agent registry down")

    script = Script(("read_file", {"path": "a.txt"}))
    agent, tools = build(kernel, script, agent=agent_facts)
    agent.run_sync("read")
    assert tools.ran == []
    assert "agent registry down" in str(script.returns()[0].content)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_switch_stops_the_run(kernel: Kernel, mode: str) -> None:
    kernel.state.set_flag("kill:all", "incident 42")
    script = Script(("read_file", {"path": "a.txt"}))
    agent, tools = build(kernel, script)
    with pytest.raises(RunStopped) as info:
        run(agent, mode, user_prompt="read")
    assert info.value.decision.code == "kill_switch"
    assert tools.ran == [] and len(script.turns) == 1  # the model was not asked again


def test_a_tool_error_is_recorded_as_the_calls_outcome(kernel: Kernel) -> None:
    agent, tools = build(kernel, Script(("lookup", {"key": "boom"})))
    with pytest.raises(LookupError):
        agent.run_sync("look")
    assert tools.ran == [("lookup", {"key": "boom"})]
    outcomes = [e for e in events(kernel) if e["kind"] == "outcome"]
    assert [o["status"] for o in outcomes] == ["exception"]
    assert "LookupError" in outcomes[0]["error"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_approval_defers_the_call_until_a_human_approves(kernel: Kernel, mode: str) -> None:
    script = Script(("pay", {"amount": 500}))
    agent, tools = build(kernel, script)
    first = run(agent, mode, user_prompt="pay the invoice")
    assert isinstance(first.output, DeferredToolRequests) and tools.ran == []
    (call,) = first.output.approvals
    approval_id = first.output.metadata[call.tool_call_id]["bastion_approval_id"]
    assert [a.id for a in kernel.pending_approvals()] == [approval_id]

    kernel.approve(approval_id, by="alice")
    resumed = run(agent, mode, message_history=first.all_messages(),
                  deferred_tool_results=DeferredToolResults(approvals={call.tool_call_id: True}))
    assert tools.ran == [("pay", {"amount": 500})]
    assert resumed.output == "paid 500"


def test_approved_in_pydantic_ai_but_not_in_bastion_is_denied(kernel: Kernel) -> None:
    script = Script(("pay", {"amount": 500}))
    agent, tools = build(kernel, script)
    first = agent.run_sync("pay")
    (call,) = first.output.approvals
    resumed = agent.run_sync(
        message_history=first.all_messages(),
        deferred_tool_results=DeferredToolResults(approvals={call.tool_call_id: True}))
    assert tools.ran == []
    (pending,) = kernel.pending_approvals()
    assert "was denied by policy" in resumed.output
    assert f"approval '{pending.id}' is not granted" in resumed.output


def test_without_deferral_an_approval_is_a_deny_and_the_retry_runs(kernel: Kernel) -> None:
    script = Script(("pay", {"amount": 500}))
    agent, tools = build(kernel, script, defer_approvals=False)
    agent.run_sync("pay")
    assert tools.ran == []
    message = str(script.returns()[0].content)
    (pending,) = kernel.pending_approvals()
    assert f"Approval id: {pending.id}" in message

    kernel.approve(pending.id, by="alice")
    retry = Script(("pay", {"amount": 500}))
    agent.run_sync("pay again", model=FunctionModel(retry))
    assert tools.ran == [("pay", {"amount": 500})]
    assert retry.returns()[0].content == "paid 500"


def test_session_is_derived_from_the_run(kernel: Kernel) -> None:
    script = Script(("read_file", {"path": "a.txt"}))
    agent, _ = build(kernel, script, session_from=lambda ctx: {"id": f"run-{ctx.run_id}"})
    result = agent.run_sync("read")
    pre = [e for e in events(kernel) if e["kind"] == "decision" and e["stage"] == "pre_tool"]
    assert pre[-1]["session"] == f"run-{result.run_id}"


def test_toolset_tools_are_governed_too(kernel: Kernel) -> None:
    ran: list[str] = []

    def drop_index(name: str) -> str:
        ran.append(name)
        return "dropped"

    script = Script(("drop_index", {"name": "ix"}))
    agent = Agent(FunctionModel(script), toolsets=[FunctionToolset([drop_index])],
                  capabilities=[Governed(kernel)])
    agent.run_sync("drop it")
    assert ran == []
    assert "destructive operations are blocked" in str(script.returns()[0].content)


def test_importing_bastion_imports_no_framework() -> None:
    code = ("import sys, bastion, bastion.adapters; "
            "assert 'pydantic_ai' not in sys.modules, 'pydantic_ai imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_example_runs() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "pydantic_ai_example.py")],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert "read_file: allowed" in out
    assert "drop_table: denied" in out
    assert "send_email ran with body='[REDACTED]'" in out
    assert "kill switch: run stopped" in out
