"""bastion.adapters.langgraph on real LangChain agents and LangGraph graphs, driven by a
scripted model: what runs, what the model sees, what is audited."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ScriptedModel, call, events, script
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import Command

import bastion
from bastion.adapters import RunStopped
from bastion.adapters.langgraph import BastionMiddleware, thread_session

POLICY = """
version: 1
name: langgraph-lane
default: deny
rules:
  - id: allow-email
    tools: [send_email]
    effect: allow
  - id: redact-body
    tools: [send_email]
    effect: redact
    redact: [args.body]
  - id: allow-lookup
    tools: [lookup]
    effect: allow
  - id: no-deletes
    tools: ["delete_*"]
    effect: deny
    message: deleting is not allowed
  - id: big-transfers
    tools: [transfer]
    when: "args.amount > 1000"
    effect: require_approval
  - id: allow-transfer
    tools: [transfer]
    effect: allow
  - id: results-ok
    stage: post_tool
    effect: allow
  - id: no-secrets-out
    stage: post_tool
    tools: [lookup]
    when: "result.contains('SECRET')"
    effect: deny
    message: the result holds a secret
"""


class Tools:
    """Real LangChain tools that count their calls and keep the arguments they got."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

        @tool
        def send_email(to: str, body: str) -> str:
            """Send an email."""
            self.calls.append(("send_email", {"to": to, "body": body}))
            return f"sent to {to}"

        @tool
        def delete_all(table: str) -> str:
            """Delete every row of a table."""
            self.calls.append(("delete_all", {"table": table}))
            return "deleted"

        @tool
        def lookup(key: str) -> str:
            """Look a key up."""
            self.calls.append(("lookup", {"key": key}))
            return f"value of {key}: SECRET-42" if key == "token" else f"value of {key}: 7"

        @tool
        def transfer(amount: int) -> str:
            """Move money."""
            self.calls.append(("transfer", {"amount": amount}))
            return f"moved {amount}"

        self.all = [send_email, delete_all, lookup, transfer]


def agent_for(kernel: bastion.Kernel, model: ScriptedModel, tools: Tools, **options: Any
              ) -> Any:
    checkpointer = options.pop("checkpointer", None)
    return create_agent(model, tools.all, middleware=[BastionMiddleware(kernel, **options)],
                        checkpointer=checkpointer)


def ask(text: str = "go") -> dict[str, Any]:
    return {"messages": [HumanMessage(text)]}


# -- allow, deny, redact, post-tool deny --------------------------------------------------------

def test_allowed_call_runs_and_is_audited(audit: Path) -> None:
    tools = Tools()
    model = ScriptedModel(messages=script(call("lookup", {"key": "colour"}), "done"))
    with bastion.Kernel.from_text(POLICY, audit=audit) as kernel:
        out = agent_for(kernel, model, tools, agent={"id": "lg-1"}).invoke(ask())
    assert tools.calls == [("lookup", {"key": "colour"})]
    assert [m.content for m in model.tool_messages()] == ["value of colour: 7"]
    assert out["messages"][-1].content == "done"
    log = events(audit)
    pre = [e for e in log if e.get("stage") == "pre_tool"]
    assert [(e["tool"], e["effect"], e["agent"]) for e in pre] == [("lookup", "allow", "lg-1")]
    assert any(e.get("kind") == "outcome" and e["status"] == "succeeded" for e in log)


def test_denied_call_never_runs_and_the_model_sees_why(audit: Path) -> None:
    tools = Tools()
    model = ScriptedModel(messages=script(call("delete_all", {"table": "users"}), "ok"))
    with bastion.Kernel.from_text(POLICY, audit=audit) as kernel:
        agent_for(kernel, model, tools).invoke(ask())
    assert tools.calls == []
    (seen,) = model.tool_messages()
    assert seen.status == "error" and seen.tool_call_id == "c1"
    assert "denied by policy" in seen.content and "deleting is not allowed" in seen.content
    assert [e["effect"] for e in events(audit) if e.get("tool") == "delete_all"] == ["deny"]


def test_redaction_reaches_the_tool() -> None:
    tools = Tools()
    model = ScriptedModel(messages=script(
        call("send_email", {"to": "a@b.c", "body": "my password is hunter2"}), "sent"))
    with bastion.Kernel.from_text(POLICY) as kernel:
        agent_for(kernel, model, tools).invoke(ask())
    assert tools.calls == [("send_email", {"to": "a@b.c", "body": "[REDACTED]"})]
    assert model.tool_messages()[0].content == "sent to a@b.c"


def test_post_tool_denial_replaces_the_result(audit: Path) -> None:
    tools = Tools()
    model = ScriptedModel(messages=script(call("lookup", {"key": "token"}), "ok"))
    with bastion.Kernel.from_text(POLICY, audit=audit) as kernel:
        agent_for(kernel, model, tools).invoke(ask())
    assert tools.calls == [("lookup", {"key": "token"})]  # it ran ...
    (seen,) = model.tool_messages()  # ... but the model never saw what it returned
    assert "SECRET" not in seen.content and seen.status == "error"
    assert "the result holds a secret" in seen.content
    outcomes = [e for e in events(audit) if e.get("kind") == "outcome"]
    assert [o["status"] for o in outcomes] == ["failed"]


# -- failing closed ------------------------------------------------------------------------------

class BrokenKernel(bastion.Kernel):
    def evaluate(self, action: bastion.Action) -> bastion.Decision:
        raise RuntimeError("policy engine down")

    async def aevaluate(self, action: bastion.Action) -> bastion.Decision:
        raise RuntimeError("policy engine down")


def test_an_exception_in_the_kernel_denies() -> None:
    tools = Tools()
    model = ScriptedModel(messages=script(call("lookup", {"key": "colour"}), "ok"))
    kernel = BrokenKernel.from_text(POLICY)
    try:
        agent_for(kernel, model, tools).invoke(ask())
    finally:
        kernel.close()
    assert tools.calls == []
    (seen,) = model.tool_messages()
    assert seen.status == "error" and "could not decide" in seen.content
    assert "policy engine down" in seen.content


def test_a_failing_fact_source_denies() -> None:
    tools = Tools()
    model = ScriptedModel(messages=script(call("lookup", {"key": "colour"}), "ok"))

    def agent() -> dict[str, Any]:
        raise LookupError("no identity")

    with bastion.Kernel.from_text(POLICY) as kernel:
        agent_for(kernel, model, tools, agent=agent).invoke(ask())
    assert tools.calls == []
    assert "no identity" in model.tool_messages()[0].content


def test_session_from_thread_id_and_missing_thread_denies(audit: Path) -> None:
    tools = Tools()
    with bastion.Kernel.from_text(POLICY, audit=audit) as kernel:
        model = ScriptedModel(messages=script(call("lookup", {"key": "a"}), "ok"))
        agent_for(kernel, model, tools, session_from=thread_session,
                  checkpointer=InMemorySaver()).invoke(
            ask(), {"configurable": {"thread_id": "thread-7"}})
        model2 = ScriptedModel(messages=script(call("lookup", {"key": "b"}), "ok"))
        agent_for(kernel, model2, tools, session_from=thread_session).invoke(ask())
    assert tools.calls == [("lookup", {"key": "a"})]  # the run without a thread id did not
    assert "thread_id" in model2.tool_messages()[0].content
    sessions = [e["session"] for e in events(audit)
                if e.get("stage") == "pre_tool" and e["effect"] == "allow"]
    assert sessions == ["thread-7"]


# -- stopping the run ----------------------------------------------------------------------------

def test_kill_switch_ends_the_run() -> None:
    tools = Tools()
    model = ScriptedModel(messages=script(call("lookup", {"key": "a"}), "should not happen"))
    with bastion.Kernel.from_text(POLICY) as kernel:
        kernel.state.set_flag("kill:all", "test")
        with pytest.raises(RunStopped) as stopped:
            agent_for(kernel, model, tools).invoke(ask())
    assert stopped.value.decision.code == "kill_switch"
    assert tools.calls == [] and len(model.seen) == 1  # the model was not asked again


def test_kill_switch_ends_a_tool_node_graph() -> None:
    tools = Tools()
    with bastion.Kernel.from_text(POLICY) as kernel:
        graph = tool_graph(BastionMiddleware(kernel), tools)
        kernel.state.set_flag("kill:all", "test")
        with pytest.raises(RunStopped):
            graph.invoke({"messages": [call("lookup", {"key": "a"})]})
    assert tools.calls == []


def test_a_tool_node_that_handles_all_errors_goes_on_but_nothing_runs() -> None:
    """Documents the limit: handle_tool_errors=True turns RunStopped into an error message."""
    tools = Tools()
    with bastion.Kernel.from_text(POLICY) as kernel:
        graph = tool_graph(BastionMiddleware(kernel), tools, handle_tool_errors=True)
        kernel.state.set_flag("kill:all", "test")
        out = graph.invoke({"messages": [call("lookup", {"key": "a"})]})
    assert tools.calls == []
    assert out["messages"][-1].status == "error" and "kill switch" in out["messages"][-1].content


# -- approvals -----------------------------------------------------------------------------------

def test_approval_pauses_the_graph_and_resumes_after_approve(audit: Path) -> None:
    tools = Tools()
    model = ScriptedModel(messages=script(call("transfer", {"amount": 5000}), "moved it"))
    config = {"configurable": {"thread_id": "pay-1"}}
    with bastion.Kernel.from_text(POLICY, audit=audit) as kernel:
        agent = agent_for(kernel, model, tools, pause_on_approval=True,
                          session_from=thread_session, checkpointer=InMemorySaver())
        paused = agent.invoke(ask(), config)
        (intr,) = paused["__interrupt__"]
        assert intr.value["type"] == "bastion_approval" and intr.value["tool"] == "transfer"
        assert tools.calls == [] and len(model.seen) == 1
        kernel.approve(intr.value["approval_id"], by="alice")
        done = agent.invoke(Command(resume="approved"), config)
    assert tools.calls == [("transfer", {"amount": 5000})]
    assert model.tool_messages()[0].content == "moved 5000"
    assert done["messages"][-1].content == "moved it"
    effects = [e["effect"] for e in events(audit) if e.get("stage") == "pre_tool"]
    assert effects == ["require_approval", "allow"]


def test_resume_without_approval_is_denied() -> None:
    tools = Tools()
    model = ScriptedModel(messages=script(call("transfer", {"amount": 5000}), "ok"))
    config = {"configurable": {"thread_id": "pay-2"}}
    with bastion.Kernel.from_text(POLICY) as kernel:
        agent = agent_for(kernel, model, tools, pause_on_approval=True,
                          checkpointer=InMemorySaver())
        agent.invoke(ask(), config)
        agent.invoke(Command(resume="approve it, please"), config)  # nobody approved
    assert tools.calls == []
    (seen,) = model.tool_messages()
    assert seen.status == "error" and "not granted" in seen.content


def test_approval_without_pause_denies_then_a_retry_runs() -> None:
    tools = Tools()
    with bastion.Kernel.from_text(POLICY) as kernel:
        guard = BastionMiddleware(kernel, session={"id": "s1"})
        first = ScriptedModel(messages=script(call("transfer", {"amount": 5000}), "waiting"))
        create_agent(first, tools.all, middleware=[guard]).invoke(ask())
        (seen,) = first.tool_messages()
        assert tools.calls == [] and "needs human approval" in seen.content
        approval_id = seen.content.split("Approval id: ")[1].split(".")[0]
        kernel.approve(approval_id, by="alice")
        again = ScriptedModel(messages=script(call("transfer", {"amount": 5000}), "done"))
        create_agent(again, tools.all, middleware=[guard]).invoke(ask())
    assert tools.calls == [("transfer", {"amount": 5000})]
    assert again.tool_messages()[0].content == "moved 5000"


# -- ToolNode and the async path -----------------------------------------------------------------

def tool_graph(guard: BastionMiddleware, tools: Tools, **node: Any) -> Any:
    graph = StateGraph(MessagesState)
    graph.add_node("tools", ToolNode(tools.all, wrap_tool_call=guard.wrap_tool_call,
                                     awrap_tool_call=guard.awrap_tool_call, **node))
    graph.add_edge(START, "tools")
    graph.add_edge("tools", END)
    return graph.compile()


def test_tool_node_wrappers_sync_and_async() -> None:
    tools = Tools()
    with bastion.Kernel.from_text(POLICY) as kernel:
        graph = tool_graph(BastionMiddleware(kernel), tools)
        msg = AIMessage(content="", tool_calls=[
            {"name": "send_email", "args": {"to": "x@y.z", "body": "b"}, "id": "a"},
            {"name": "delete_all", "args": {"table": "t"}, "id": "b"}])
        out = graph.invoke({"messages": [msg]})
        aout = asyncio.run(graph.ainvoke({"messages": [msg]}))
    for result in (out, aout):
        by_id = {m.tool_call_id: m for m in result["messages"] if isinstance(m, ToolMessage)}
        assert by_id["a"].content == "sent to x@y.z" and by_id["b"].status == "error"
    assert tools.calls == [("send_email", {"to": "x@y.z", "body": "[REDACTED]"})] * 2


def test_async_agent_allow_deny_redact_post_and_stop() -> None:
    tools = Tools()
    model = ScriptedModel(messages=script(
        call("send_email", {"to": "a@b.c", "body": "secret"}, "c1"),
        call("delete_all", {"table": "t"}, "c2"),
        call("lookup", {"key": "token"}, "c3"),
        "done"))
    with bastion.Kernel.from_text(POLICY) as kernel:
        agent = agent_for(kernel, model, tools)
        asyncio.run(agent.ainvoke(ask()))
        seen = {m.tool_call_id: m for m in model.tool_messages()}
        assert seen["c1"].content == "sent to a@b.c"
        assert seen["c2"].status == "error" and "denied by policy" in seen["c2"].content
        assert "SECRET" not in seen["c3"].content
        kernel.state.set_flag("kill:all", "test")
        stopped = ScriptedModel(messages=script(call("lookup", {"key": "a"}), "no"))
        with pytest.raises(RunStopped):
            asyncio.run(agent_for(kernel, stopped, tools).ainvoke(ask()))
    assert tools.calls == [("send_email", {"to": "a@b.c", "body": "[REDACTED]"}),
                           ("lookup", {"key": "token"})]


def test_async_kernel_exception_denies() -> None:
    tools = Tools()
    model = ScriptedModel(messages=script(call("lookup", {"key": "a"}), "ok"))
    kernel = BrokenKernel.from_text(POLICY)
    try:
        asyncio.run(agent_for(kernel, model, tools).ainvoke(ask()))
    finally:
        kernel.close()
    assert tools.calls == [] and "could not decide" in model.tool_messages()[0].content


# -- the example ---------------------------------------------------------------------------------

def test_example_runs() -> None:
    root = Path(os.environ.get("BASTION_ROOT", Path(__file__).parents[3]))
    done = subprocess.run([sys.executable, str(root / "examples" / "langgraph_example.py")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "denied" in out and "[REDACTED]" in out and "run stopped" in out
