"""A LlamaIndex FunctionAgent under bastion, driven by a scripted LLM (no network, no API key).

Run: pip install 'bastion[llama-index]' && python examples/llama_index_example.py
"""

import asyncio
from typing import Any

from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.llms import ChatMessage, MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool

import bastion
from bastion.adapters import RunStopped
from bastion.adapters.llama_index import govern_tools, watch

POLICY = """
version: 1
name: llama-index-example
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


def scripted(*turns: tuple[str, dict[str, Any]] | str) -> MockFunctionCallingLLM:
    """An LLM that makes the given tool calls, one per turn, then says the given text."""
    queue = list(turns)

    def respond(messages: Any, **kwargs: Any) -> ChatMessage:
        turn = queue.pop(0) if queue else "All done."
        if isinstance(turn, str):
            return ChatMessage(role="assistant", content=turn)
        name, args = turn
        return ChatMessage(role="assistant", blocks=[
            ToolCallBlock(tool_call_id=f"call-{len(queue)}", tool_name=name, tool_kwargs=args)])

    return MockFunctionCallingLLM(response_generator=respond)


def send_email(to: str, body: str) -> str:
    """Send an email."""
    print(f"  tool send_email ran: to={to} body={body}")
    return f"sent to {to}"


def delete_all(table: str) -> str:
    """Delete every row of a table."""
    print("  tool delete_all ran (it should not have)")
    return "deleted"


async def main() -> None:
    tools = [FunctionTool.from_defaults(send_email), FunctionTool.from_defaults(delete_all)]
    with bastion.Kernel.from_text(POLICY) as kernel:
        llm = scripted(("send_email", {"to": "ops@example.com", "body": "the password is x"}),
                       ("delete_all", {"table": "users"}))
        agent = FunctionAgent(tools=govern_tools(tools, kernel, agent={"id": "mailer"}), llm=llm)
        handler = agent.run(user_msg="Email ops, then clean up.")
        async for event in handler.stream_events():
            if isinstance(event, ToolCallResult):
                out = event.tool_output
                print(f"model saw ({'error' if out.is_error else 'ok'}): {out.content}")
        print(f"agent said: {await handler}")

        kernel.state.set_flag("kill:all", "example")
        agent = FunctionAgent(tools=govern_tools(tools, kernel),
                              llm=scripted(("send_email", {"to": "a", "body": "b"})))
        try:
            await watch(agent.run(user_msg="One more email."))
        except RunStopped as stopped:
            print(f"run stopped: {stopped.decision.code}")


if __name__ == "__main__":
    asyncio.run(main())
