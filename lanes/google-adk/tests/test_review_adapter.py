"""Review findings for bastion.adapters.google_adk (each test asserts the correct behaviour)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.genai import types
from test_google_adk import POLICY, Harness, ScriptedModel

import bastion
import bastion.audit


class SameIdModel(ScriptedModel):
    """Like ScriptedModel, but every function call of a turn carries the id the model chose."""

    async def generate_content_async(self, llm_request: LlmRequest, stream: bool = False
                                     ) -> AsyncGenerator[LlmResponse, None]:
        self.requests.append(llm_request)
        turn = len(self.requests) - 1
        if turn < len(self.script):
            parts = [types.Part(function_call=types.FunctionCall(name=n, args=a, id="dup"))
                     for n, a in self.script[turn]]
        else:
            parts = [types.Part(text="done")]
        yield LlmResponse(content=types.Content(role="model", parts=parts))


@pytest.fixture
def kernel(tmp_path: Path) -> Any:
    with bastion.Kernel.from_text(POLICY, audit=tmp_path / "audit.db") as k:
        yield k


def test_duplicate_function_call_ids_do_not_skip_the_result_check(kernel: Any) -> None:
    ran: list[str] = []

    async def read_file(path: str) -> dict[str, Any]:
        """Read a file."""
        ran.append("read_file")
        await asyncio.sleep(0.05)
        return {"text": "the key is SECRET-123"}

    async def lookup(q: str) -> str:
        """Look something up."""
        ran.append("lookup")
        await asyncio.sleep(0.01)
        return "42 items"

    h = Harness(kernel, [])
    h.model = h.agent.model = SameIdModel(
        script=[[("read_file", {"path": "/etc/key"}), ("lookup", {"q": "x"})]], requests=[])
    h.agent.tools = [read_file, lookup]  # async tools: ADK runs the two calls concurrently
    asyncio.run(h.arun())
    assert sorted(ran) == ["lookup", "read_file"]
    seen = json.dumps(h.model.responses(1))
    # the post_tool rule `no-secrets` must withhold read_file's result whatever the call ids
    assert "SECRET-123" not in seen, seen


BUDGET_POLICY = """
version: 1
name: adk-review-budget
default: deny
budgets:
  session_calls: 3
rules:
  - id: allow-tools
    tools: [lookup, worker]
    effect: allow
"""


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="review-adapters: a sub-agent run through AgentTool gets a fresh ADK "
                          "session, so the default session id resets per delegation "
                          "(budgets, loop breaker, flow taint escape)")
def test_agent_tool_sub_agent_calls_count_in_the_callers_session(tmp_path: Path) -> None:
    from google.adk.agents import LlmAgent
    from google.adk.tools.agent_tool import AgentTool

    ran: list[str] = []

    def lookup(q: str) -> str:
        """Look something up."""
        ran.append(q)
        return "42 items"

    with bastion.Kernel.from_text(BUDGET_POLICY, audit=tmp_path / "a.db") as kernel:
        h = Harness(kernel, [[("worker", {"request": "look three things up"})]])
        worker_model = ScriptedModel(script=[[("lookup", {"q": "a"})], [("lookup", {"q": "b"})],
                                             [("lookup", {"q": "c"})]], requests=[])
        worker = LlmAgent(name="worker", model=worker_model, tools=[lookup],
                          description="looks things up")
        h.agent.tools = [AgentTool(agent=worker)]
        asyncio.run(h.arun())
        kernel.audit.flush()
        sessions = {e["session"] for e in bastion.audit.read_events(kernel.audit.path)
                    if e["kind"] == "decision" and e["stage"] == "pre_tool"}
    assert ran, "the sub-agent did not run"
    assert len(ran) <= 2, (ran, sessions)  # session_calls: 3 = the worker call + two lookups
    # one user session: the delegation and the sub-agent's calls share it (and its budget)
    assert sessions == {h.session_id}, sessions
