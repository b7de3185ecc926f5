"""Review findings for bastion.adapters.pydantic_ai (each test asserts the correct behaviour; all
fixed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from bastion import Kernel
from bastion.adapters.pydantic_ai import Governed

POLICY = """\
version: 1
default: deny
rules:
  - id: pay
    tools: [pay]
    effect: allow
  - id: mask-card
    tools: [pay]
    effect: redact
    redact: [args.card.number]
  - id: reads
    tools: [read_file]
    effect: allow
  - id: no-etc
    tools: [read_file]
    when: "args.path.startsWith('/etc')"
    effect: deny
"""


class Once:
    """A scripted model: the first turn makes ``calls``, the next one ends the run."""

    def __init__(self, *calls: tuple[str, dict[str, Any]]):
        self.calls = calls
        self.turns = 0

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.turns += 1
        if self.turns == 1:
            return ModelResponse(parts=[ToolCallPart(name, args) for name, args in self.calls])
        return ModelResponse(parts=[TextPart("done")])


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    with Kernel.from_text(POLICY, audit=tmp_path / "audit.db") as k:
        yield k


class Card(BaseModel):
    number: str
    amount: int


def test_redaction_reaches_a_field_of_a_model_typed_argument(kernel: Kernel) -> None:
    # Governed.wrap_tool_execute hands the kernel PydanticAI's *validated* arguments, in which a
    # BaseModel-typed parameter is a model instance, not a mapping. The kernel's path redaction
    # (`args.card.number`) only walks dicts and lists, so it does nothing, the decision says
    # "redacted" and the tool gets the card number in clear.
    got: list[Card] = []
    agent = Agent(FunctionModel(Once(("pay", {"card": {"number": "4111", "amount": 5}}))),
                  capabilities=[Governed(kernel)])

    @agent.tool_plain
    def pay(card: Card) -> str:
        got.append(card)
        return "paid"

    agent.run_sync("pay")
    assert got, "the allowed call should run"
    assert got[0].number != "4111", "the card number reached the tool unredacted"


class ResolvePaths(AbstractCapability[Any]):  # type: ignore[misc]
    """An ordinary argument-rewriting capability: makes relative paths absolute."""

    async def before_tool_execute(self, ctx: Any, *, call: Any, tool_def: Any,
                                  args: dict[str, Any]) -> dict[str, Any]:
        if "path" in args and not args["path"].startswith("/"):
            return {**args, "path": "/" + args["path"]}
        return args


def test_governed_last_decides_the_arguments_the_tool_gets(kernel: Kernel) -> None:
    # docs/adapters/pydantic-ai.md: "Put Governed last in capabilities when other capabilities
    # rewrite tool arguments ... the last one sits closest to the tool and decides the arguments
    # the tool really gets." But the `handler` Governed.wrap_tool_execute calls is PydanticAI's
    # whole execute lifecycle (ToolManager._run_execute_hooks.lifecycle), which runs every
    # capability's before_tool_execute *after* the decision: the tool gets arguments no one
    # decided ("etc/shadow" was allowed, "/etc/shadow" is what is read).
    read: list[str] = []
    agent = Agent(FunctionModel(Once(("read_file", {"path": "etc/shadow"}))),
                  capabilities=[ResolvePaths(), Governed(kernel)])

    @agent.tool_plain
    def read_file(path: str) -> str:
        read.append(path)
        return f"text of {path}"

    agent.run_sync("read")
    assert "/etc/shadow" not in read, "the tool ran with arguments the policy denies"
