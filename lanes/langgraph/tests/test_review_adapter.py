"""Review findings for bastion.adapters.langgraph (each test asserts the correct behaviour; all
fixed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ScriptedModel, call, script
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool

import bastion
from bastion.adapters.langgraph import BastionMiddleware

POLICY = """
version: 1
default: deny
rules:
  - id: remove
    tools: [remove]
    effect: allow
  - id: no-recursive-remove
    tools: [remove]
    when: "args.recursive == true"
    effect: deny
    message: recursive removal is not allowed
"""


def test_the_tool_gets_the_arguments_that_were_decided(audit: Path) -> None:
    # BastionMiddleware.wrap_tool_call decides on request.tool_call["args"] as the model sent
    # them ({"recursive": "true"}, a string: `args.recursive == true` does not match, so the call
    # is allowed) and hands the same dict to the handler; ToolNode then validates it with the
    # tool's args schema (pydantic, lax mode) and calls the tool with recursive=True - the call
    # the policy denies.
    ran: list[tuple[str, bool]] = []

    @tool
    def remove(path: str, recursive: bool = False) -> str:
        """Remove a path."""
        ran.append((path, recursive))
        return "removed"

    model = ScriptedModel(messages=script(call("remove", {"path": "/data",
                                                           "recursive": "true"}), "done"))
    with bastion.Kernel.from_text(POLICY, audit=audit) as kernel:
        agent = create_agent(model, [remove], middleware=[BastionMiddleware(kernel)])
        agent.invoke({"messages": [HumanMessage("clean up")]})
    assert ("/data", True) not in ran, "the tool ran with recursive=True, which policy denies"
