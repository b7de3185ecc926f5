"""Review findings (round 3) for bastion.adapters.crewai: each test asserts the correct
behaviour; each failed before its fix."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import FINAL_REACT, ScriptedLLM, decisions, react
from crewai import Agent, Crew, Task
from crewai.tools import tool

from bastion import Kernel
from bastion.adapters.crewai import Governed


def _crew(llm: ScriptedLLM, tools: list[Any]) -> Crew:
    agent = Agent(role="clerk", goal="help", backstory="a careful clerk", llm=llm,
                  tools=tools, verbose=False, max_iter=6)
    task = Task(description="do the job", expected_output="a short answer", agent=agent)
    return Crew(agents=[agent], tasks=[task], verbose=False)


def test_react_retries_of_a_raising_tool_are_each_decided(kernel: Kernel) -> None:
    runs: list[int] = []

    @tool("lookup")
    def lookup(query: str) -> str:
        """Look a word up (it has an effect, then fails)."""
        runs.append(1)
        # the operator pulls the kill switch while the tool is running
        kernel.state.set_flag("kill:all", "incident")
        raise RuntimeError("upstream timed out after the effect happened")

    llm = ScriptedLLM(model="scripted", native=False,
                      script=[react("lookup", query="otter"), FINAL_REACT])
    with Governed(kernel, agent={"id": "clerk-1"}, session={"id": "s-1"}):
        try:
            _crew(llm, [lookup]).kickoff()
        except Exception:  # a stop raised at the next model call is fine
            pass
    executions, decided = len(runs), len(decisions(kernel, "lookup"))
    # every execution of the tool must have had its own allow decision; here the kill switch
    # is engaged after the first execution, so the tool must run exactly once
    assert executions == 1, f"the tool ran {executions} times on {decided} decision(s)"
