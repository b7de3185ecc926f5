"""Review findings (round 3) for bastion.adapters.google_adk: each test asserts the correct
behaviour; each failed before its fix."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_google_adk import POLICY, Harness, ScriptedModel

import bastion

SUB_POLICY = POLICY.replace("tools: [lookup, send_email, read_file, transfer]",
                            "tools: [lookup, send_email, read_file, transfer, worker]")


def test_sub_agent_tools_are_governed_even_without_inherited_plugins(tmp_path: Path) -> None:
    from google.adk.agents import LlmAgent
    from google.adk.tools.agent_tool import AgentTool

    ran: list[str] = []

    def delete_file(path: str) -> str:
        """Delete a file."""
        ran.append(path)
        return "deleted"

    with bastion.Kernel.from_text(SUB_POLICY, audit=tmp_path / "a.db") as kernel:
        h = Harness(kernel, [[("worker", {"request": "clean up"})]])
        worker = LlmAgent(name="worker", model=ScriptedModel(
            script=[[("delete_file", {"path": "/prod/db"})]], requests=[]),
            tools=[delete_file], description="cleans up")
        h.agent.tools = [AgentTool(agent=worker, include_plugins=False)]
        asyncio.run(h.arun())
    # `no-delete` denies delete_file for every agent the app drives, sub-agents included:
    # either the sub-agent's call is decided, or the ungovernable AgentTool call is denied
    assert ran == [], "delete_file ran with no kernel decision"
