"""A LangChain agent under bastion, driven by a scripted model (no network, no API key).

Run: pip install 'bastion[langgraph]' && python examples/langgraph_example.py
"""

from typing import Any

from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

import bastion
from bastion.adapters import RunStopped
from bastion.adapters.langgraph import BastionMiddleware

POLICY = """
version: 1
name: langgraph-example
default: deny
rules:
  - id: allow-email
    tools: [send_email]
    effect: allow
  - id: hide-body
    tools: [send_email]
    effect: redact
    redact: [args.body]
  - id: no-deletes
    tools: ["delete_*"]
    effect: deny
    message: deleting is not allowed
"""


class ScriptedModel(GenericFakeChatModel):
    """Answers from a script; tools are "bound" by ignoring them."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> "ScriptedModel":
        return self


def tool_call(name: str, args: dict[str, Any], cid: str) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": cid}])


@tool
def send_email(to: str, body: str) -> str:
    """Send an email."""
    print(f"  tool send_email ran: to={to} body={body}")
    return f"sent to {to}"


@tool
def delete_all(table: str) -> str:
    """Delete every row of a table."""
    print("  tool delete_all ran (it should not have)")
    return "deleted"


def main() -> None:
    with bastion.Kernel.from_text(POLICY) as kernel:
        model = ScriptedModel(messages=iter([
            tool_call("send_email", {"to": "ops@example.com", "body": "the password is x"}, "1"),
            tool_call("delete_all", {"table": "users"}, "2"),
            "All done.",
        ]))
        agent = create_agent(model, [send_email, delete_all],
                             middleware=[BastionMiddleware(kernel, agent={"id": "mailer"})])
        out = agent.invoke({"messages": [HumanMessage("Email ops, then clean up.")]})
        for msg in out["messages"]:
            if isinstance(msg, ToolMessage):
                print(f"model saw ({msg.status}): {msg.content}")

        kernel.state.set_flag("kill:all", "example")
        model = ScriptedModel(messages=iter([tool_call("send_email", {"to": "a", "body": "b"},
                                                       "3")]))
        agent = create_agent(model, [send_email], middleware=[BastionMiddleware(kernel)])
        try:
            agent.invoke({"messages": [HumanMessage("One more email.")]})
        except RunStopped as stopped:
            print(f"run stopped: {stopped.decision.code}")


if __name__ == "__main__":
    main()
