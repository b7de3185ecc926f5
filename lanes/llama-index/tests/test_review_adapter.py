"""Review findings for bastion.adapters.llama_index (each test asserts the correct behaviour)."""

import asyncio
import json
from typing import Any

import pytest
from conftest import Script
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import CitableBlock, TextBlock
from llama_index.core.llms import MessageRole
from llama_index.core.tools import FunctionTool
from test_llama_index import POLICY

import bastion
from bastion.adapters.llama_index import govern_tools, watch


def test_post_tool_rules_see_every_block_the_model_gets() -> None:
    ran: list[str] = []

    def lookup(key: str) -> list[Any]:
        """Look a key up."""
        ran.append(key)
        return [TextBlock(text=f"value of {key}:"),
                CitableBlock(content=[TextBlock(text="SECRET-42")], source="vault://k",
                             title="k")]

    script = Script(("lookup", {"key": "token"}), "ok")
    with bastion.Kernel.from_text(POLICY) as kernel:
        tools = govern_tools([FunctionTool.from_defaults(lookup)], kernel)
        agent = FunctionAgent(tools=tools, llm=script.llm())

        async def go() -> Any:
            return await watch(agent.run(user_msg="go"))

        asyncio.run(go())
    assert ran == ["token"]
    shown = [m.model_dump(mode="json") for turn in script.seen for m in turn
             if m.role == MessageRole.TOOL]
    # the policy's `no-secrets-out` post_tool rule must keep SECRET from the model
    assert "SECRET" not in json.dumps(shown), shown
