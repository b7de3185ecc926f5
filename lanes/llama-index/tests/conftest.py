"""A scripted function-calling LLM for LlamaIndex agents: it answers from a list of turns and
remembers every message list it was sent, so tests can read what the model saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.llms import ChatMessage, MessageRole, MockFunctionCallingLLM

from bastion.audit import read_events

Turn = tuple[str, dict[str, Any]] | list[tuple[str, dict[str, Any]]] | str


class Script:
    """The model's turns: a tool call ``(name, kwargs)``, several of them, or a final text."""

    def __init__(self, *turns: Turn):
        self.turns = list(turns)
        self.seen: list[list[ChatMessage]] = []

    def __call__(self, messages: Any, **kwargs: Any) -> ChatMessage:
        self.seen.append(list(messages))
        turn = self.turns.pop(0) if self.turns else "done"
        if isinstance(turn, str):
            return ChatMessage(role="assistant", content=turn)
        calls = turn if isinstance(turn, list) else [turn]
        n = len(self.seen)
        return ChatMessage(role="assistant", blocks=[
            ToolCallBlock(tool_call_id=f"c{n}-{i}", tool_name=name, tool_kwargs=kwargs)
            for i, (name, kwargs) in enumerate(calls)])

    def llm(self) -> MockFunctionCallingLLM:
        return MockFunctionCallingLLM(response_generator=self)

    def tool_results(self) -> list[str]:
        """The tool results shown to the model in its last turn."""
        last = self.seen[-1] if self.seen else []
        return [m.content or "" for m in last if m.role == MessageRole.TOOL]


def events(path: Path) -> list[dict[str, Any]]:
    return list(read_events(path))


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


def pytest_configure(config: pytest.Config) -> None:
    # llama-index inspects pydantic models the deprecated way; not ours to fix
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:inspect")
