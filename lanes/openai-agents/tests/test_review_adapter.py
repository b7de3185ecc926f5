"""Review findings for bastion.adapters.openai_agents (each test asserts the correct behaviour; all
fixed)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENAI_API_KEY", "sk-test-not-used")

import pytest
from agents import (
    Agent,
    Runner,
    ToolGuardrailFunctionOutput,
    function_tool,
    set_tracing_disabled,
    tool_input_guardrail,
)
from agents.testing import ScriptedModel, assistant_message, function_call

from bastion import Kernel
from bastion.adapters.openai_agents import Guard

set_tracing_disabled(True)

POLICY = """\
version: 1
default: deny
rules:
  - id: reads
    tools: [read_file]
    effect: allow
  - id: no-deletes
    tools: [delete_file]
    effect: deny
  - id: remove
    tools: [remove]
    effect: allow
  - id: no-recursive-remove
    tools: [remove]
    when: "args.recursive == true"
    effect: deny
"""


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    with Kernel.from_text(POLICY, audit=tmp_path / "audit.db") as k:
        yield k


def outputs(model: ScriptedModel) -> dict[str, Any]:
    return {item["call_id"]: item["output"] for item in model.calls[-1].input
            if isinstance(item, dict) and item.get("type") == "function_call_output"}


def test_a_left_over_decision_never_lets_another_tool_run(kernel: Kernel) -> None:
    # Guard._needs_approval stores the allow decision for call "call_0" (read_file) in
    # Guard._calls, but the tool's own input guardrail (which runs before bastion's) rejects the
    # call, so bastion's input guardrail never pops it. In the next run on the same Guard the
    # model (many providers number their call ids per response: "call_0", ...) calls delete_file
    # - governed with guard.guardrails(), as the docs allow for any FunctionTool or MCP server -
    # with the same call id: Guard._input pops the stale read_file decision without checking its
    # tool (or arguments) and allows delete_file, which policy denies.
    ran: list[tuple[str, str]] = []
    guard = Guard(kernel)

    @tool_input_guardrail
    def no_tmp(data: Any) -> ToolGuardrailFunctionOutput:
        if "/tmp" in data.context.tool_arguments:
            return ToolGuardrailFunctionOutput.reject_content("no /tmp here")
        return ToolGuardrailFunctionOutput.allow()

    @function_tool(tool_input_guardrails=[no_tmp])
    def read_file(path: str) -> str:
        """Read a file."""
        ran.append(("read_file", path))
        return f"text of {path}"

    @function_tool(**guard.guardrails())
    def delete_file(path: str) -> str:
        """Delete a file."""
        ran.append(("delete_file", path))
        return "deleted"

    tools = [guard.tool(read_file), delete_file]
    first = ScriptedModel([[function_call("read_file", {"path": "/tmp/x"}, call_id="call_0")],
                           [assistant_message("done")]])
    Runner.run_sync(Agent(name="h", model=first, tools=tools), "read")
    assert ran == [] and outputs(first) == {"call_0": "no /tmp here"}

    second = ScriptedModel([[function_call("delete_file", {"path": "/tmp/x"}, call_id="call_0")],
                            [assistant_message("done")]])
    Runner.run_sync(Agent(name="h", model=second, tools=tools), "clean up")
    assert ("delete_file", "/tmp/x") not in ran, "a tool denied by policy ran"


def test_the_tool_gets_the_arguments_that_were_decided(kernel: Kernel) -> None:
    # Guard decides on the raw JSON the model sent ({"recursive": "true"}, a string: the rule
    # `args.recursive == true` does not match, so it is allowed); the SDK then validates the
    # arguments with the tool's pydantic model in lax mode and calls it with recursive=True,
    # the very call the policy denies. Guard._invoke passes pre.args on as JSON but nothing
    # makes the tool get values of the types that were decided.
    ran: list[tuple[str, bool]] = []

    @function_tool
    def remove(path: str, recursive: bool = False) -> str:
        """Remove a path."""
        ran.append((path, recursive))
        return "removed"

    model = ScriptedModel([[function_call("remove", {"path": "/data", "recursive": "true"},
                                          call_id="call_0")],
                           [assistant_message("done")]])
    Runner.run_sync(Agent(name="h", model=model, tools=[Guard(kernel).tool(remove)]), "rm")
    assert ("/data", True) not in ran, "the tool ran with recursive=True, which policy denies"
