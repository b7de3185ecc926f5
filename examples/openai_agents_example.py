"""An OpenAI Agents SDK agent under bastion, driven by a scripted model (no network, no key).

Run: pip install 'bastion[openai-agents]' && python examples/openai_agents_example.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENAI_API_KEY", "not-used")  # the SDK reads it; nothing is sent

from agents import (
    Agent,
    Runner,
    ToolInputGuardrailTripwireTriggered,
    function_tool,
    set_tracing_disabled,
)
from agents.testing import ScriptedModel, assistant_message, function_call

from bastion import Kernel
from bastion.adapters.openai_agents import Guard

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


@function_tool
def read_file(path: str) -> str:
    """Read a file."""
    return f"text of {path}"


@function_tool
def drop_table(name: str) -> str:
    """Drop a table."""
    raise AssertionError("never runs: the policy denies it")


@function_tool
def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    print(f"send_email ran with body={body!r}")
    return f"sent to {to}"


def main() -> None:
    set_tracing_disabled(True)
    kernel = Kernel.from_text(POLICY)
    guard = Guard(kernel, agent={"id": "helper"})
    tools = [guard.tool(t) for t in (read_file, drop_table, send_email)]
    calls = [("read_file", {"path": "notes.txt"}), ("drop_table", {"name": "users"}),
             ("send_email", {"to": "bob@example.com", "body": "card 4111 1111"})]
    model = ScriptedModel([
        [function_call(name, args, call_id=name) for name, args in calls],
        [assistant_message("all done")],
    ])
    Runner.run_sync(Agent(name="helper", model=model, tools=tools), "tidy up and tell bob")
    for item in model.calls[-1].input:  # what the model saw in its second turn
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            print(f"{item['call_id']}: {item['output']}")

    kernel.state.set_flag("kill:all", "example")
    again = ScriptedModel([[function_call("read_file", {"path": "x"}, call_id="again")]])
    try:
        Runner.run_sync(Agent(name="helper", model=again, tools=tools), "once more")
    except ToolInputGuardrailTripwireTriggered as stop:
        print(f"kill switch: run stopped ({stop.output.output_info.code})")
    kernel.close()


if __name__ == "__main__":
    main()
