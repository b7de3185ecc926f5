"""A PydanticAI agent under bastion, driven by a scripted model (no network, no API key).

Run: pip install 'bastion[pydantic-ai]' && python examples/pydantic_ai_example.py
"""

from __future__ import annotations

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from bastion import Kernel
from bastion.adapters import RunStopped
from bastion.adapters.pydantic_ai import Governed

POLICY = """\
version: 1
rules:
  - id: reads
    tools: [read_file]
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
"""


def model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """First turn: call three tools. Second turn: report what came back."""
    returns = [p for p in messages[-1].parts if isinstance(p, ToolReturnPart)]
    if not returns:
        return ModelResponse(parts=[
            ToolCallPart("read_file", {"path": "notes.txt"}),
            ToolCallPart("drop_table", {"name": "users"}),
            ToolCallPart("send_email", {"to": "bob@example.com", "body": "card 4111 1111"}),
        ])
    return ModelResponse(parts=[TextPart("\n".join(f"{r.tool_name}: {r.content}"
                                                   for r in returns))])


def main() -> None:
    kernel = Kernel.from_text(POLICY)
    agent = Agent(FunctionModel(model), capabilities=[Governed(kernel, agent={"id": "helper"})])

    @agent.tool_plain
    def read_file(path: str) -> str:
        return f"contents of {path}"

    @agent.tool_plain
    def drop_table(name: str) -> str:
        raise AssertionError("never runs: the policy denies it")

    @agent.tool_plain
    def send_email(to: str, body: str) -> str:
        print(f"send_email ran with body={body!r}")
        return f"sent to {to}"

    result = agent.run_sync("tidy up and tell bob")
    for line in result.output.splitlines():
        tool, _, text = line.partition(": ")
        print(f"{tool}: {'denied' if 'denied by policy' in text else 'allowed'} -> {text}")

    kernel.state.set_flag("kill:all", "example")
    try:
        agent.run_sync("once more")
    except RunStopped as stop:
        print(f"kill switch: run stopped ({stop.decision.code})")
    kernel.close()


if __name__ == "__main__":
    main()
