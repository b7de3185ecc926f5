"""A CrewAI crew under bastion, driven by a scripted model (no network, no API key).

Run: python examples/crewai_example.py   (needs: pip install 'bastion[crewai]')
Prints one JSON line per step: what the tool received and what the model saw next.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

from typing import Any

from crewai import Agent, Crew, Task
from crewai.llms.base_llm import BaseLLM
from crewai.tools import tool
from pydantic import Field

import bastion
from bastion.adapters import RunStopped
from bastion.adapters.crewai import Governed

POLICY = """\
version: 1
rules:
  - {id: reads, tools: [lookup], effect: allow}
  - {id: mail, tools: [send_email], effect: allow}
  - {id: mask-body, tools: [send_email], effect: redact, redact: [args.body]}
  - {id: no-delete, tools: [delete_db], effect: deny, message: destructive operations are blocked}
"""


class ScriptedLLM(BaseLLM):
    """Replays OpenAI-style tool calls, then a final answer; keeps what it was sent."""

    script: list[Any] = Field(default_factory=list)
    seen: list[Any] = Field(default_factory=list)

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None,
             available_functions: Any = None, from_task: Any = None, from_agent: Any = None,
             response_model: Any = None) -> Any:
        self.seen.append([dict(m) for m in messages])  # a copy: CrewAI keeps appending
        return self.script.pop(0)

    def supports_function_calling(self) -> bool:
        return True

    def get_context_window_size(self) -> int:
        return 100_000


got: dict[str, dict[str, Any]] = {}


@tool("lookup")
def lookup(query: str) -> str:
    """Look a word up."""
    got["lookup"] = {"query": query}
    return f"found {query}"


@tool("send_email")
def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    got["send_email"] = {"to": to, "body": body}
    return f"sent to {to}"


@tool("delete_db")
def delete_db(name: str) -> str:
    """Delete a database."""
    got["delete_db"] = {"name": name}
    return "deleted"


def call(tool_name: str, /, **args: Any) -> list[dict[str, Any]]:
    return [{"id": f"call_{tool_name}", "type": "function",
             "function": {"name": tool_name, "arguments": json.dumps(args)}}]


def crew(llm: BaseLLM) -> Crew:
    agent = Agent(role="clerk", goal="help", backstory="a careful clerk", llm=llm,
                  tools=[lookup, send_email, delete_db], verbose=False)
    return Crew(agents=[agent], tasks=[Task(description="do the job", expected_output="text",
                                            agent=agent)], verbose=False)


def last_tool_message(messages: list[dict[str, Any]]) -> str:
    return next(str(m["content"]) for m in reversed(messages) if m.get("role") == "tool")


def main() -> None:
    kernel = bastion.Kernel.from_text(POLICY)
    steps = [("lookup", {"query": "otter"}), ("delete_db", {"name": "prod"}),
             ("send_email", {"to": "ops@example.com", "body": "card 4111 1111"})]
    llm = ScriptedLLM(model="scripted", script=[call(n, **a) for n, a in steps] + ["done"])
    with Governed(kernel, agent={"id": "clerk-1"}, session={"id": "demo"}):
        crew(llm).kickoff()
        for turn, (name, _) in enumerate(steps, start=1):
            print(json.dumps({"step": name, "ran": name in got, "tool_got": got.get(name),
                              "model_saw": last_tool_message(llm.seen[turn])}))

        kernel.state.set_flag("kill:all", "example")  # the kill switch: the next call ends the run
        stopped = ScriptedLLM(model="scripted", script=[call("lookup", query="x"), "done"])
        try:
            crew(stopped).kickoff()
            print(json.dumps({"step": "kill", "stopped": False}))
        except RunStopped as exc:
            print(json.dumps({"step": "kill", "stopped": True, "code": exc.decision.code}))
    kernel.close()


if __name__ == "__main__":
    main()
