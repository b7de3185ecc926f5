"""Review findings (round 3) for bastion.adapters.llama_index: each test asserts the correct
behaviour; each failed before its fix."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import Script
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent
from llama_index.core.tools import FunctionTool

import bastion
from bastion.adapters.llama_index import govern_tools, govern_workflow, watch

POLICY = """
version: 1
name: llama-index-review
default: deny
rules:
  - id: allow-lookup
    tools: [lookup]
    effect: allow
"""


def test_agent_workflow_handoff_is_decided_by_the_kernel() -> None:
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value of {key}"

    def wire(amount: int) -> str:
        """Wire money."""
        return f"wired {amount}"

    front = Script(("handoff", {"to_agent": "payer", "reason": "user wants money"}), "ok")
    payer = Script("I am the payer now")
    with bastion.Kernel.from_text(POLICY) as kernel:
        workflow = AgentWorkflow(agents=[
            FunctionAgent(name="front", description="answers questions", llm=front.llm(),
                          tools=govern_tools([FunctionTool.from_defaults(lookup)], kernel,
                                             agent={"id": "front"}),
                          can_handoff_to=["payer"]),
            FunctionAgent(name="payer", description="moves money", llm=payer.llm(),
                          tools=govern_tools([FunctionTool.from_defaults(wire)], kernel,
                                             agent={"id": "payer"})),
        ], root_agent="front")
        govern_workflow(workflow, kernel)  # the workflow's own handoff tool, decided too

        async def go() -> Any:
            return await watch(workflow.run(user_msg="send 500 to bob"))

        asyncio.run(go())
    # `default: deny` and no rule for `handoff`: control must not pass to the payer agent
    assert payer.seen == [], "the handoff ran without a kernel decision"


def test_an_allowed_handoff_still_hands_off() -> None:
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value of {key}"

    front = Script(("handoff", {"to_agent": "payer", "reason": "user wants money"}), "ok")
    payer = Script("I am the payer now")
    policy = POLICY + ("  - {id: allow-handoff, tools: [handoff], "
                       "when: \"args.to_agent == 'payer'\", effect: allow}\n")
    with bastion.Kernel.from_text(policy) as kernel:
        workflow = govern_workflow(AgentWorkflow(agents=[
            FunctionAgent(name="front", description="answers questions", llm=front.llm(),
                          tools=govern_tools([FunctionTool.from_defaults(lookup)], kernel,
                                             agent={"id": "front"}),
                          can_handoff_to=["payer"]),
            FunctionAgent(name="payer", description="moves money", llm=payer.llm(), tools=[]),
        ], root_agent="front"), kernel)

        async def go() -> Any:
            return await watch(workflow.run(user_msg="send 500 to bob"))

        asyncio.run(go())
    assert payer.seen, "an allowed handoff must pass control to the payer"
