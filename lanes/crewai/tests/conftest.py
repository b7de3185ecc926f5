"""A scripted CrewAI model and a few counted tools: real Agent/Task/Crew runs, no network."""

from __future__ import annotations

import os

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from crewai import Agent, Crew, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool
from pydantic import Field

from bastion import Kernel
from bastion.audit import read_events

POLICY = """\
version: 1
rules:
  - id: reads
    tools: [lookup, read_secret]
    effect: allow
  - id: mail
    tools: [send_email]
    effect: allow
  - id: mask-body
    tools: [send_email]
    effect: redact
    redact: [args.body]
  - id: no-delete
    tools: [delete_db]
    effect: deny
    message: destructive operations are blocked
  - id: pay
    tools: [pay]
    effect: require_approval
    message: payments need a human
  - id: results
    stage: post_tool
    effect: allow
  - id: no-keys
    stage: post_tool
    tools: [read_secret]
    when: "string(result).contains('BEGIN PRIVATE KEY')"
    effect: deny
    message: private keys never reach the model
"""


class ScriptedLLM(BaseLLM):
    """Answers each call with the next scripted reply and records the messages it was sent.

    A reply is a list of OpenAI-style tool calls (native function calling) or a string
    (ReAct text, or the final answer)."""

    script: list[Any] = Field(default_factory=list)
    seen: list[list[dict[str, Any]]] = Field(default_factory=list)
    native: bool = True

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None,
             available_functions: Any = None, from_task: Any = None, from_agent: Any = None,
             response_model: Any = None) -> Any:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        self.seen.append(json.loads(json.dumps(messages, default=str)))
        if not self.script:
            raise AssertionError("the model was called more often than scripted")
        return self.script.pop(0)

    async def acall(self, messages: Any, tools: Any = None, callbacks: Any = None,
                    available_functions: Any = None, from_task: Any = None,
                    from_agent: Any = None, response_model: Any = None) -> Any:
        return self.call(messages, tools, callbacks, available_functions, from_task, from_agent,
                         response_model)

    def supports_function_calling(self) -> bool:
        return self.native

    def supports_stop_words(self) -> bool:
        return False

    def get_context_window_size(self) -> int:
        return 100_000

    def text_after(self, turn: int) -> str:
        """Everything the model was sent in call ``turn`` (0-based), as one string."""
        return json.dumps(self.seen[turn])


def native(tool_name: str, /, **args: Any) -> list[dict[str, Any]]:
    return [{"id": f"call_{tool_name}", "type": "function",
             "function": {"name": tool_name, "arguments": json.dumps(args)}}]


def react(tool_name: str, /, **args: Any) -> str:
    return (f"Thought: I should use {tool_name}\nAction: {tool_name}\n"
            f"Action Input: {json.dumps(args)}")


FINAL_NATIVE = "all done"
FINAL_REACT = "Thought: I know the answer\nFinal Answer: all done"


class Tools:
    """The tools an agent gets; ``ran`` lists (tool, arguments) of the calls that executed."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []
        ran = self.ran

        @tool("lookup")
        def lookup(query: str) -> str:
            """Look a word up."""
            ran.append(("lookup", {"query": query}))
            return f"found {query}"

        @tool("send_email")
        def send_email(to: str, body: str) -> str:
            """Send an e-mail."""
            ran.append(("send_email", {"to": to, "body": body}))
            return f"sent to {to}"

        @tool("delete_db")
        def delete_db(name: str) -> str:
            """Delete a database."""
            ran.append(("delete_db", {"name": name}))
            return "deleted"

        @tool("pay")
        def pay(amount: int) -> str:
            """Pay an amount."""
            ran.append(("pay", {"amount": amount}))
            return f"paid {amount}"

        @tool("read_secret")
        def read_secret(path: str) -> str:
            """Read a file."""
            ran.append(("read_secret", {"path": path}))
            return "-----BEGIN PRIVATE KEY-----\nMIIEvQ..."

        self.all = [lookup, send_email, delete_db, pay, read_secret]


def crew_for(llm: ScriptedLLM, tools: Tools) -> Crew:
    agent = Agent(role="clerk", goal="help", backstory="a careful clerk", llm=llm,
                  tools=tools.all, verbose=False, max_iter=6)
    task = Task(description="do the job", expected_output="a short answer", agent=agent)
    return Crew(agents=[agent], tasks=[task], verbose=False)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    with Kernel.from_text(POLICY, audit=tmp_path / "audit.db", state=tmp_path / "state.db") as k:
        yield k


@pytest.fixture
def tools() -> Tools:
    return Tools()


def decisions(kernel: Kernel, tool_name: str | None = None, stage: str = "pre_tool"
              ) -> list[dict[str, Any]]:
    """The audited decisions (at ``stage``), optionally for one tool."""
    kernel.audit.flush()
    return [e for e in read_events(kernel.audit.path) if e["kind"] == "decision"
            and e["stage"] == stage and (tool_name is None or e["tool"] == tool_name)]
