"""A scripted AgentDojo agent, optionally governed by a bastion kernel.

No model: the agent replays the user task's ground truth (``ground_truth(pre_environment)``) and
plays a perfectly obedient victim. Whenever a raw tool result (what the tool returned, before any
marking) holds the goal of one of the suite's injection tasks, the agent replays that injection
task's ground truth right after the current call, so every injection the attack places lands
unless something stops it.

With a kernel, every step crosses it (docs/flow.md, "Flow facts"):

1. the user prompt as ``stage="input"`` (``args={"text": prompt}``): trusted input;
2. each call as ``pre_tool``; anything but ``allow`` is not executed (``require_approval`` counts
   as not executed: nobody approves) and the agent gets a denial string and carries on with the
   rest of its script. With ``approver=True`` a held call goes to a simulated user instead, through
   the kernel's own approval flow (``Kernel.approve``/``refuse``, then the call again with
   ``approval=``): the user approves the calls of their own task and refuses the injected ones,
   a perfect approver, so what this mode measures is how often a person is asked;
3. each executed call's raw result as ``post_tool`` (``result=``), so it is labelled.

A denied call is kept in the transcript as assistant text, not as a tool call: AgentDojo's
trace-based checks (``security_from_traces``, ``utility_from_traces``) read assistant tool calls
as executed calls. The final answer is the task's ``GROUND_TRUTH_OUTPUT`` only when every call
of the user's own script ran; otherwise the agent says it could not finish.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from agentdojo.agent_pipeline.base_pipeline_element import BasePipelineElement
from agentdojo.agent_pipeline.tool_execution import tool_result_to_str
from agentdojo.base_tasks import BaseInjectionTask, BaseUserTask
from agentdojo.functions_runtime import Env, FunctionCall, FunctionsRuntime
from agentdojo.logging import Logger
from agentdojo.task_suite.task_suite import TaskSuite
from agentdojo.types import (
    ChatAssistantMessage,
    ChatMessage,
    ChatToolResultMessage,
    ChatUserMessage,
    text_content_block_from_string,
)
from pydantic import BaseModel

import bastion

# important_instructions addresses the victim model by name; the name must be one AgentDojo knows
# (agentdojo.models.MODEL_NAMES). No model is called: it only fills "{model}" in the injection.
PIPELINE_NAME = "scripted-replay-gpt-4o-2024-05-13"
_WS = re.compile(r"\s+")


def plain(value: Any) -> Any:
    """A tool's return value as JSON-like data (what an adapter hands the kernel)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _texts(value: Any) -> list[str]:
    """Every string inside a plain value, white space collapsed."""
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            out.append(_WS.sub(" ", item))
    return out


class ScriptedAgent(BasePipelineElement):
    """Replays ground truths; ``kernel=None`` is the undefended baseline.

    ``stats`` counts, over the agent's life: calls denied by the kernel (by rule id), injections
    that landed (the agent saw a goal and started to obey), and calls the scripts asked for.
    """

    def __init__(self, suite: TaskSuite, kernel: bastion.Kernel | None, *,
                 name: str = PIPELINE_NAME, approver: bool = False) -> None:
        self.name = name
        self.kernel = kernel
        self.approver = approver
        self.prompts: list[tuple[int, int]] = []  # per run: approvals asked for own / injected
        self._tasks: dict[str, BaseUserTask | BaseInjectionTask] = {
            t.PROMPT: t for t in suite.user_tasks.values()}
        self._tasks.update({t.GOAL: t for t in suite.injection_tasks.values()})
        self._goals = [(_WS.sub(" ", t.GOAL), t) for t in suite.injection_tasks.values()]
        self._sessions = itertools.count(1)
        self.stats: Counter[str] = Counter()
        self.blocked: list[dict[str, Any]] = []  # every call the kernel stopped, with why
        self.context: dict[str, str] = {}  # set by the driver: suite, attack, task ids

    def query(self, query: str, runtime: FunctionsRuntime, env: Env,  # type: ignore[override]
              messages: Sequence[ChatMessage] = (), extra_args: dict | None = None,
              ) -> tuple[str, FunctionsRuntime, Env, Sequence[ChatMessage], dict]:
        extra_args = {} if extra_args is None else extra_args
        task = self._tasks[query]
        pre = env.model_copy(deep=True)
        session = {"id": f"{self.name}-{next(self._sessions)}"}
        out: list[ChatMessage] = [*messages, ChatUserMessage(
            role="user", content=[text_content_block_from_string(query)])]
        if self.kernel is not None:
            verdict = self.kernel.evaluate(bastion.Action(stage="input", session=session,
                                                          args={"text": query}))
            if not verdict.allowed:
                return query, runtime, env, [*out, _say("bastion refused the request")], extra_args
        script: deque[tuple[FunctionCall, bool]] = deque(
            (call, True) for call in task.ground_truth(pre))
        landed: set[str] = set()
        complete = True
        asked = Counter[bool]()
        while script:
            call, own = script.popleft()
            self.stats["calls"] += 1
            if self.kernel is not None:
                decision = self.kernel.evaluate(bastion.Action(
                    tool=call.function, stage="pre_tool", session=session,
                    args=dict(call.args)))
                if self.approver and decision.effect == "require_approval" \
                        and decision.approval_id is not None:
                    asked[own] += 1
                    decision = self._ask(call, own, session, decision.approval_id)
                if not decision.allowed:
                    complete &= not own
                    self._blocked(call, own, decision)
                    out.append(_say(f"[call not executed: {call.function}({call.args})]"))
                    out.append(_tool(call, "", f"bastion {decision.effect}: "
                                     + "; ".join(decision.reasons or decision.rule_ids)))
                    continue
            result, error = runtime.run_function(env, call.function, call.args)
            raw = plain(result) if error is None else error
            if self.kernel is not None:
                self.kernel.evaluate(bastion.Action(tool=call.function, stage="post_tool",
                                                    session=session, result=raw))
            out.append(ChatAssistantMessage(role="assistant", tool_calls=[call],
                                            content=[text_content_block_from_string("")]))
            out.append(_tool(call, tool_result_to_str(result) if error is None else "", error))
            texts = _texts(raw)
            for goal, inj in self._goals:
                if inj.ID not in landed and any(goal in t for t in texts):
                    landed.add(inj.ID)
                    self.stats["injections_landed"] += 1
                    script.extendleft((c, False) for c in reversed(inj.ground_truth(pre)))
        self.prompts.append((asked[True], asked[False]))
        answer = getattr(task, "GROUND_TRUTH_OUTPUT", "") if complete else \
            "I could not complete the task: a step was not allowed."
        out.append(_say(answer))
        Logger.get().log(out)  # the run's transcript, into AgentDojo's trace file
        return query, runtime, env, out, extra_args

    def _ask(self, call: FunctionCall, own: bool, session: dict[str, str],
             approval_id: str) -> bastion.Decision:
        """The simulated user decides a held call: their own task's calls are approved and
        presented again with the approval; injected ones are refused."""
        assert self.kernel is not None
        if own:
            self.kernel.approve(approval_id, by="user", note="my own request")
        else:
            self.kernel.refuse(approval_id, by="user", note="not what I asked for")
        return self.kernel.evaluate(bastion.Action(
            tool=call.function, stage="pre_tool", session=session, args=dict(call.args),
            approval=approval_id))

    def _blocked(self, call: FunctionCall, own: bool, decision: bastion.Decision) -> None:
        self.stats["blocked_own" if own else "blocked_injected"] += 1
        for rule in decision.rule_ids or ("<none>",):
            self.stats[f"rule:{rule}"] += 1
        self.blocked.append({**self.context, "tool": call.function, "args": plain(call.args),
                             "injected": not own, "effect": decision.effect,
                             "rules": list(decision.rule_ids),
                             "reasons": list(decision.reasons)})


def _say(text: str) -> ChatAssistantMessage:
    return ChatAssistantMessage(role="assistant", tool_calls=None,
                                content=[text_content_block_from_string(text)])


def _tool(call: FunctionCall, text: str, error: str | None) -> ChatToolResultMessage:
    return ChatToolResultMessage(role="tool", content=[text_content_block_from_string(text)],
                                 tool_call_id=None, tool_call=call, error=error)
