"""A Haystack Agent under bastion, driven by a scripted chat generator (no network, no key).

Run: python examples/haystack_example.py   (needs: pip install 'bastion[haystack]')
"""

from __future__ import annotations

from typing import Any

from haystack import component
from haystack.components.agents import Agent
from haystack.dataclasses import ChatMessage, ToolCall
from haystack.tools import Tool

import bastion
from bastion.adapters.haystack import hooks

POLICY = """
version: 1
name: haystack-example
default: deny
rules:
  - id: allow-tools
    tools: [lookup, send_email]
    effect: allow
  - id: no-delete
    tools: [delete_file]
    effect: deny
    message: deleting files is blocked
  - id: mask-body
    tools: [send_email]
    effect: redact
    redact: [args.body]
"""

SCRIPT = [ToolCall(tool_name="lookup", arguments={"q": "invoices"}, id="c1"),
          ToolCall(tool_name="delete_file", arguments={"path": "/data"}, id="c2"),
          ToolCall(tool_name="send_email", arguments={"to": "ops@example.com",
                                                       "body": "card 4111 1111 1111 1111"},
                   id="c3")]


@component
class ScriptedChat:
    """Asks for one tool per turn, then answers; prints the tool results it is shown."""

    def __init__(self) -> None:
        self.turn = 0

    @component.output_types(replies=list[ChatMessage])
    def run(self, messages: list[ChatMessage], tools: Any = None) -> dict[str, Any]:
        last = messages[-1].tool_call_result
        if last is not None:
            print(f"  model sees: {last.result}")
        self.turn += 1
        if self.turn <= len(SCRIPT):
            return {"replies": [ChatMessage.from_assistant(tool_calls=[SCRIPT[self.turn - 1]])]}
        return {"replies": [ChatMessage.from_assistant("all done")]}


def tool(name: str) -> Tool:
    def run(**kwargs: Any) -> str:
        print(f"{name} ran with {kwargs}")
        return f"{name}: ok"
    return Tool(name=name, description=name, function=run,
                parameters={"type": "object", "properties": {}})


def main() -> None:
    with bastion.Kernel.from_text(POLICY) as kernel:
        agent = Agent(chat_generator=ScriptedChat(),
                      tools=[tool("lookup"), tool("delete_file"), tool("send_email")],
                      hooks=hooks(kernel, agent={"id": "example-agent"}, session={"id": "s1"}))
        out = agent.run(messages=[ChatMessage.from_user("tidy up")])
        ran = {m.tool_call_result.origin.tool_name: m.tool_call_result.error
               for m in out["messages"] if m.tool_call_result is not None}
        for name, error in ran.items():
            print(f"{name} {'denied' if error else 'allowed'}")
        print(f"exit reason: {out['exit_reason']}")


if __name__ == "__main__":
    main()
