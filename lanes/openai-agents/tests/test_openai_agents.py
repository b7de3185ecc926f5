"""bastion.adapters.openai_agents on real Agents SDK agents driven by a ScriptedModel."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENAI_API_KEY", "sk-test-not-used")

import pytest
from agents import (
    Agent,
    FunctionTool,
    Runner,
    ToolInputGuardrailTripwireTriggered,
    ToolOutputGuardrailTripwireTriggered,
    function_tool,
    set_tracing_disabled,
)
from agents.mcp import MCPServerStdio
from agents.testing import ScriptedModel, assistant_message, function_call

from bastion import Kernel
from bastion.adapters.openai_agents import Guard
from bastion.audit import read_events

set_tracing_disabled(True)
ROOT = Path(os.environ.get("BASTION_ROOT", Path(__file__).resolve().parents[3]))
MCP_SERVER = Path(__file__).with_name("mcp_server.py")

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
    when: "leaves(result).exists(x, string(x).contains('PRIVATE KEY'))"
    effect: deny
  - id: mask-tokens
    stage: post_tool
    tools: [lookup]
    effect: redact
    redact_pattern: 'sk-[a-z0-9]+'
"""


class Tools:
    """Function tools that count their calls."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []

        @function_tool
        def read_file(path: str) -> str:
            """Read a file."""
            self.ran.append(("read_file", {"path": path}))
            return "-----BEGIN PRIVATE KEY-----" if path.endswith(".pem") else f"text of {path}"

        @function_tool
        async def send_email(to: str, body: str) -> str:
            """Send an e-mail."""
            self.ran.append(("send_email", {"to": to, "body": body}))
            return f"sent to {to}"

        @function_tool
        def drop_table(name: str) -> str:
            """Drop a table."""
            self.ran.append(("drop_table", {"name": name}))
            return "dropped"

        @function_tool
        def pay(amount: int) -> str:
            """Pay an amount."""
            self.ran.append(("pay", {"amount": amount}))
            return f"paid {amount}"

        @function_tool
        def lookup(key: str) -> str:
            """Look a key up."""
            self.ran.append(("lookup", {"key": key}))
            return f"{key} = sk-abc123"

        self.all: list[FunctionTool] = [read_file, send_email, drop_table, pay, lookup]


def script(*calls: tuple[str, dict[str, Any]]) -> ScriptedModel:
    """A model whose first turn makes ``calls`` and whose second turn ends the run."""
    items = [function_call(name, args, call_id=f"call-{i}")
             for i, (name, args) in enumerate(calls)]
    return ScriptedModel([items, [assistant_message("done")]])


def outputs(model: ScriptedModel) -> dict[str, Any]:
    """The tool outputs the model received in its latest turn, by call id."""
    return {item["call_id"]: item["output"] for item in model.calls[-1].input
            if isinstance(item, dict) and item.get("type") == "function_call_output"}


def run(agent: Agent[Any], mode: str, prompt: Any, **kwargs: Any) -> Any:
    if mode == "sync":
        return Runner.run_sync(agent, prompt, **kwargs)
    return asyncio.run(Runner.run(agent, prompt, **kwargs))


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    with Kernel.from_text(POLICY, audit=tmp_path / "audit.db") as k:
        yield k


def governed(kernel: Kernel, model: ScriptedModel, **options: Any
             ) -> tuple[Agent[Any], Tools, Guard]:
    tools, guard = Tools(), Guard(kernel, **options)
    agent = Agent(name="helper", model=model, tools=[guard.tool(t) for t in tools.all])
    return agent, tools, guard


def events(kernel: Kernel) -> list[dict[str, Any]]:
    kernel.audit.flush()
    return list(read_events(kernel.audit.path))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_allowed_tool_runs_and_its_outcome_is_audited(kernel: Kernel, mode: str) -> None:
    model = script(("read_file", {"path": "notes.txt"}))
    agent, tools, _ = governed(kernel, model, agent={"id": "agent-1"}, session={"id": "s-1"})
    result = run(agent, mode, "read my notes")
    assert tools.ran == [("read_file", {"path": "notes.txt"})]
    assert outputs(model) == {"call-0": "text of notes.txt"}
    assert result.final_output == "done"
    log = events(kernel)
    pre = [e for e in log if e["kind"] == "decision" and e["stage"] == "pre_tool"]
    assert [(e["tool"], e["effect"], e["agent"], e["session"]) for e in pre] == [
        ("read_file", "allow", "agent-1", "s-1")]  # decided once, not again in the guardrail
    assert [e["status"] for e in log if e["kind"] == "outcome"] == ["succeeded"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_denied_tool_never_runs_and_the_model_sees_why(kernel: Kernel, mode: str) -> None:
    model = script(("drop_table", {"name": "users"}), ("read_file", {"path": "a.txt"}))
    agent, tools, _ = governed(kernel, model)
    run(agent, mode, "clean up")
    assert tools.ran == [("read_file", {"path": "a.txt"})]
    seen = outputs(model)
    assert "denied by policy: destructive operations are blocked" in seen["call-0"]
    assert seen["call-1"] == "text of a.txt"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_redaction_reaches_the_tool(kernel: Kernel, mode: str) -> None:
    model = script(("send_email", {"to": "a@example.com", "body": "card 4111"}))
    agent, tools, _ = governed(kernel, model)
    run(agent, mode, "mail it")
    assert tools.ran == [("send_email", {"to": "a@example.com", "body": "[REDACTED]"})]
    assert outputs(model) == {"call-0": "sent to a@example.com"}


def test_streamed_runs_are_governed(kernel: Kernel) -> None:
    model = script(("drop_table", {"name": "users"}),
                   ("send_email", {"to": "a@example.com", "body": "card 4111"}))
    agent, tools, _ = governed(kernel, model)

    async def main() -> None:
        result = Runner.run_streamed(agent, "clean up and mail")
        async for _ in result.stream_events():
            pass

    asyncio.run(main())
    assert tools.ran == [("send_email", {"to": "a@example.com", "body": "[REDACTED]"})]
    assert "destructive operations are blocked" in outputs(model)["call-0"]
    assert model.calls[-1].streamed


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_post_call_denial_replaces_the_result(kernel: Kernel, mode: str) -> None:
    model = script(("read_file", {"path": "id.pem"}))
    agent, tools, _ = governed(kernel, model)
    run(agent, mode, "read the key")
    assert tools.ran == [("read_file", {"path": "id.pem"})]
    seen = outputs(model)["call-0"]
    assert "The result of tool 'read_file' was denied by policy" in seen
    assert "PRIVATE KEY" not in json.dumps(model.calls[-1].input)
    assert [e["status"] for e in events(kernel) if e["kind"] == "outcome"] == ["failed"]


def test_a_redacted_result_reaches_the_model(kernel: Kernel) -> None:
    model = script(("lookup", {"key": "api"}))
    agent, _, _ = governed(kernel, model)
    Runner.run_sync(agent, "look it up")
    assert outputs(model) == {"call-0": "api = [REDACTED]"}


class BrokenKernel(Kernel):
    def evaluate(self, action: Any) -> Any:
        raise RuntimeError("policy store unreachable")

    async def aevaluate(self, action: Any) -> Any:
        raise RuntimeError("policy store unreachable")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_error_in_the_hook_denies(tmp_path: Path, mode: str) -> None:
    with BrokenKernel.from_text(POLICY, audit=tmp_path / "audit.db") as broken:
        model = script(("read_file", {"path": "a.txt"}))
        agent, tools, _ = governed(broken, model)
        run(agent, mode, "read")
        assert tools.ran == []
        seen = outputs(model)["call-0"]
        assert "bastion could not decide it" in seen and "policy store unreachable" in seen
        decisions = [e for e in events(broken) if e["kind"] == "decision"]
        assert decisions and decisions[-1]["effect"] == "deny"


def test_an_agent_source_that_raises_denies(kernel: Kernel) -> None:
    def agent_facts() -> dict[str, Any]:
        raise KeyError("agent registry down")

    model = script(("read_file", {"path": "a.txt"}))
    agent, tools, _ = governed(kernel, model, agent=agent_facts)
    Runner.run_sync(agent, "read")
    assert tools.ran == []
    assert "agent registry down" in outputs(model)["call-0"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_kill_switch_stops_the_run(kernel: Kernel, mode: str) -> None:
    kernel.state.set_flag("kill:all", "incident 42")
    model = script(("read_file", {"path": "a.txt"}))
    agent, tools, _ = governed(kernel, model)
    with pytest.raises(ToolInputGuardrailTripwireTriggered) as info:
        run(agent, mode, "read")
    assert info.value.output.output_info.code == "kill_switch"
    assert tools.ran == [] and len(model.calls) == 1  # the model was not asked again


def test_kill_switch_engaged_while_the_tool_ran_stops_at_the_result(kernel: Kernel) -> None:
    ran: list[str] = []

    @function_tool(name_override="read_file")
    def read_while_killed(path: str) -> str:
        """Reads, while an operator pulls the kill switch."""
        ran.append(path)
        kernel.state.set_flag("kill:all", "operator")
        return f"text of {path}"

    model = script(("read_file", {"path": "a.txt"}))
    agent = Agent(name="helper", model=model, tools=[Guard(kernel).tool(read_while_killed)])
    with pytest.raises(ToolOutputGuardrailTripwireTriggered) as info:
        Runner.run_sync(agent, "read")
    assert info.value.output.output_info.code == "kill_switch"
    assert ran == ["a.txt"] and len(model.calls) == 1  # its result never reached the model


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_approval_pauses_the_run_until_a_human_approves(kernel: Kernel, mode: str) -> None:
    model = ScriptedModel([[function_call("pay", {"amount": 500}, call_id="call-0")],
                           [assistant_message("done")]])
    agent, tools, _ = governed(kernel, model)
    first = run(agent, mode, "pay the invoice")
    (item,) = first.interruptions
    assert item.tool_name == "pay" and tools.ran == []
    (pending,) = kernel.pending_approvals()

    kernel.approve(pending.id, by="alice")
    state = first.to_state()
    state.approve(item)
    resumed = run(agent, mode, state)
    assert tools.ran == [("pay", {"amount": 500})]
    assert outputs(model) == {"call-0": "paid 500"} and resumed.final_output == "done"


def test_approved_in_the_sdk_but_not_in_bastion_is_denied(kernel: Kernel) -> None:
    model = ScriptedModel([[function_call("pay", {"amount": 500}, call_id="call-0")],
                           [assistant_message("done")]])
    agent, tools, _ = governed(kernel, model)
    first = Runner.run_sync(agent, "pay")
    state = first.to_state()
    state.approve(first.interruptions[0])
    Runner.run_sync(agent, state)
    assert tools.ran == []
    (pending,) = kernel.pending_approvals()
    assert f"approval '{pending.id}' is not granted" in outputs(model)["call-0"]


def test_the_tools_own_approval_policy_still_applies(kernel: Kernel) -> None:
    tools, guard = Tools(), Guard(kernel)
    read_file = tools.all[0]
    read_file.needs_approval = True
    model = script(("read_file", {"path": "a.txt"}))
    first = Runner.run_sync(Agent(name="h", model=model, tools=[guard.tool(read_file)]), "read")
    assert len(first.interruptions) == 1 and tools.ran == []
    assert kernel.pending_approvals() == []  # bastion allowed it; the tool asked for a human


def test_guardrails_alone_deny_a_call_that_needs_redacting(kernel: Kernel) -> None:
    tools, guard = Tools(), Guard(kernel)
    send_email = tools.all[1]
    send_email.tool_input_guardrails = [guard.input_guardrail]
    send_email.tool_output_guardrails = [guard.output_guardrail]
    model = script(("send_email", {"to": "a@example.com", "body": "card 4111"}),
                   ("read_file", {"path": "a.txt"}))
    read_file = tools.all[0]
    read_file.tool_input_guardrails = [guard.input_guardrail]
    read_file.tool_output_guardrails = [guard.output_guardrail]
    Runner.run_sync(Agent(name="h", model=model, tools=[send_email, read_file]), "mail")
    assert tools.ran == [("read_file", {"path": "a.txt"})]
    assert "must be redacted, which bastion cannot do" in outputs(model)["call-0"]


def test_a_result_with_no_decision_behind_it_is_withheld(kernel: Kernel) -> None:
    tools, guard = Tools(), Guard(kernel)
    read_file = tools.all[0]
    read_file.tool_output_guardrails = [guard.output_guardrail]  # no input guardrail
    model = script(("read_file", {"path": "a.txt"}))
    Runner.run_sync(Agent(name="h", model=model, tools=[read_file]), "read")
    assert "was withheld: bastion made no decision" in outputs(model)["call-0"]


def test_session_is_derived_from_the_run_context(kernel: Kernel) -> None:
    model = script(("read_file", {"path": "a.txt"}), ("pay", {"amount": 1}))
    agent, _, _ = governed(kernel, model,
                           session_from=lambda ctx: {"id": ctx.context["conversation"]})
    Runner.run_sync(agent, "read", context={"conversation": "conv-9"})
    pre = [e for e in events(kernel) if e["kind"] == "decision" and e["stage"] == "pre_tool"]
    assert {e["session"] for e in pre} == {"conv-9"} and len(pre) == 2


def test_mcp_server_tools_are_governed(kernel: Kernel, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    log.touch()
    guard = Guard(kernel)
    model = script(("read_file", {"path": "a.txt"}), ("drop_table", {"name": "users"}),
                   ("read_file", {"path": "id.pem"}),
                   ("send_email", {"to": "a@example.com", "body": "card 4111"}))

    async def main() -> None:
        params = {"command": sys.executable, "args": [str(MCP_SERVER)],
                  "env": {**os.environ, "CALLS_LOG": str(log)}}
        async with MCPServerStdio(params, client_session_timeout_seconds=30,
                                  **guard.guardrails()) as server:
            await Runner.run(Agent(name="h", model=model, mcp_servers=[server]), "go")

    asyncio.run(main())
    ran = sorted(log.read_text().splitlines())
    assert [json.loads(line) for line in ran] == [["read_file", {"path": "a.txt"}],
                                                   ["read_file", {"path": "id.pem"}]]
    seen = outputs(model)
    assert "text of a.txt" in json.dumps(seen["call-0"])
    assert "destructive operations are blocked" in seen["call-1"]
    assert "The result of tool 'read_file' was denied" in seen["call-2"]
    assert "must be redacted, which bastion cannot do" in seen["call-3"]
    assert "PRIVATE KEY" not in json.dumps(model.calls[-1].input)


def test_importing_bastion_imports_no_framework() -> None:
    code = ("import sys, bastion, bastion.adapters; "
            "assert 'agents' not in sys.modules, 'agents imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_example_runs() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "openai_agents_example.py")],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert "read_file: text of notes.txt" in out
    assert "drop_table: The tool call 'drop_table' was denied" in out
    assert "send_email ran with body='[REDACTED]'" in out
    assert "kill switch: run stopped (kill_switch)" in out
