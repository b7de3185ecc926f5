"""A Dify agent strategy whose tool calls go through bastion (no Dify server, no network).

Run: python examples/dify_example.py   (needs Python >= 3.12 and: pip install 'bastion[dify]')

In a plugin, Dify's daemon creates the strategy with a session whose ``session.tool.invoke``
reaches the real tools. Here ``LocalTools`` stands in for that side, and the "model" is a fixed
plan of tool calls. Prints one JSON line per step: what the tool received and what the model
would read back.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from types import SimpleNamespace
from typing import Any

from dify_plugin.entities.agent import AgentInvokeMessage, AgentRuntime
from dify_plugin.entities.tool import ToolInvokeMessage, ToolProviderType

import bastion
import bastion.adapters.dify as governed  # the module, not the class (see docs/adapters/dify.md)
from bastion.adapters import RunStopped

POLICY = """\
version: 1
rules:
  - {id: reads, tools: [lookup], effect: allow}
  - {id: mail, tools: [send_email], effect: allow}
  - {id: mask-body, tools: [send_email], effect: redact, redact: [args.body]}
  - {id: no-delete, tools: [delete_db], effect: deny, message: destructive operations are blocked}
"""

got: dict[str, dict[str, Any]] = {}


class LocalTools:
    """Stands in for ``session.tool`` (in Dify: a backwards invocation to the daemon)."""

    def invoke(self, provider_type: ToolProviderType, provider: str, tool_name: str,
               parameters: dict[str, Any], credential_id: str | None = None
               ) -> Generator[ToolInvokeMessage, None, None]:
        got[tool_name] = dict(parameters)
        yield ToolInvokeMessage(type=ToolInvokeMessage.MessageType.TEXT,
                                message=ToolInvokeMessage.TextMessage(text=f"{tool_name} done"))


class PlanStrategy(governed.GovernedAgentStrategy):
    """Runs ``parameters["plan"]`` (tool name, arguments) and reports what came back."""

    def _invoke(self, parameters: dict[str, Any]) -> Generator[AgentInvokeMessage, None, None]:
        for name, args in parameters["plan"]:
            text = "".join(m.message.text for m in self.invoke_tool(
                ToolProviderType.BUILT_IN, "demo", name, args))
            yield self.create_json_message({"step": name, "model_saw": text})


def run(plan: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    strategy = PlanStrategy(runtime=AgentRuntime(user_id="user-1"),
                            session=SimpleNamespace(tool=LocalTools(), conversation_id="conv-1"))
    return [m.message.json_object for m in strategy.invoke({"plan": plan})]


def main() -> None:
    kernel = bastion.Kernel.from_text(POLICY)
    PlanStrategy.governed = governed.Governed(
        kernel, agent={"id": "dify-agent"},
        session_from=lambda s: {"id": s.session.conversation_id})
    for step in run([("lookup", {"query": "otter"}), ("delete_db", {"name": "prod"}),
                     ("send_email", {"to": "ops@example.com", "body": "card 4111 1111"})]):
        name = step["step"]
        print(json.dumps({**step, "ran": name in got, "tool_got": got.get(name)}))

    kernel.state.set_flag("kill:all", "example")  # the kill switch ends the run
    try:
        run([("lookup", {"query": "x"})])
        print(json.dumps({"step": "kill", "stopped": False}))
    except RunStopped as exc:
        print(json.dumps({"step": "kill", "stopped": True, "code": exc.decision.code}))
    kernel.close()


if __name__ == "__main__":
    main()
