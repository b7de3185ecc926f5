"""A scripted chat model for LangChain agents: it answers from a list and remembers every
message list it was sent, so tests can read what the model saw."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from pydantic import Field

from bastion.audit import read_events


class ScriptedModel(GenericFakeChatModel):
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None,
                  run_manager: Any = None, **kwargs: Any) -> Any:
        self.seen.append(list(messages))
        return super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)

    def tool_messages(self) -> list[ToolMessage]:
        """The tool results the model was shown, in order (each once)."""
        last = self.seen[-1] if self.seen else []
        return [m for m in last if isinstance(m, ToolMessage)]


def call(name: str, args: dict[str, Any], cid: str = "c1") -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": cid,
                                              "type": "tool_call"}])


def script(*turns: AIMessage | str) -> Iterator[AIMessage | str]:
    return iter(turns)


def events(path: Path) -> list[dict[str, Any]]:
    return list(read_events(path))


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"
