"""bastion.adapters.llama_index on real LlamaIndex agents driven by a scripted function-calling
LLM: what runs, what the model sees, what is audited."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Script, events
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import Context

import bastion
from bastion.adapters import RunStopped
from bastion.adapters.llama_index import (
    ApprovalDecided,
    ApprovalRequired,
    GovernedTool,
    govern_tools,
    watch,
)

POLICY = """
version: 1
name: llama-index-lane
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
    tools: [lookup, whoami]
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
    """Real LlamaIndex function tools that record the arguments they were called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

        def send_email(to: str, body: str) -> str:
            """Send an email."""
            self.calls.append(("send_email", {"to": to, "body": body}))
            return f"sent to {to}"

        def delete_all(table: str) -> str:
            """Delete every row of a table."""
            self.calls.append(("delete_all", {"table": table}))
            return "deleted"

        def lookup(key: str) -> str:
            """Look a key up."""
            self.calls.append(("lookup", {"key": key}))
            return f"value of {key}: SECRET-42" if key == "token" else f"value of {key}: 7"

        async def transfer(amount: int) -> str:
            """Move money."""
            self.calls.append(("transfer", {"amount": amount}))
            return f"moved {amount}"

        async def whoami(ctx: Context) -> str:
            """Report the run's user."""
            self.calls.append(("whoami", {}))
            return f"user {await ctx.store.get('user', default='nobody')}"

        self.all = [FunctionTool.from_defaults(send_email), FunctionTool.from_defaults(delete_all),
                    FunctionTool.from_defaults(lookup), FunctionTool.from_defaults(transfer),
                    FunctionTool.from_defaults(whoami)]


def agent(kernel: bastion.Kernel, script: Script, tools: Tools, **options: Any
          ) -> FunctionAgent:
    return FunctionAgent(tools=govern_tools(tools.all, kernel, **options), llm=script.llm())


def run(agent: FunctionAgent, text: str = "go") -> Any:
    async def go() -> Any:
        return await watch(agent.run(user_msg=text))
    return asyncio.run(go())


# -- allow, deny, redact, post-tool deny --------------------------------------------------------

def test_allowed_call_runs_and_is_audited(audit: Path) -> None:
    tools, script = Tools(), Script(("lookup", {"key": "colour"}), "done")
    with bastion.Kernel.from_text(POLICY, audit=audit) as kernel:
        out = run(agent(kernel, script, tools, agent={"id": "li-1"}, session={"id": "s-1"}))
    assert tools.calls == [("lookup", {"key": "colour"})]
    assert script.tool_results() == ["value of colour: 7"]
    assert str(out) == "done"
    log = events(audit)
    pre = [(e["tool"], e["effect"], e["agent"], e["session"]) for e in log
           if e.get("stage") == "pre_tool"]
    assert pre == [("lookup", "allow", "li-1", "s-1")]
    assert [e["status"] for e in log if e.get("kind") == "outcome"] == ["succeeded"]


def test_the_model_sees_the_same_schema() -> None:
    tools = Tools()
    with bastion.Kernel.from_text(POLICY) as kernel:
        governed = govern_tools(tools.all, kernel)
    for plain, wrapped in zip(tools.all, governed, strict=True):
        assert wrapped.metadata is plain.metadata
        assert wrapped.metadata.to_openai_tool() == plain.metadata.to_openai_tool()


def test_denied_call_never_runs_and_the_model_sees_why(audit: Path) -> None:
    tools, script = Tools(), Script(("delete_all", {"table": "users"}), "ok")
    with bastion.Kernel.from_text(POLICY, audit=audit) as kernel:
        run(agent(kernel, script, tools))
    assert tools.calls == []
    (seen,) = script.tool_results()
    assert "denied by policy" in seen and "deleting is not allowed" in seen
    assert [e["effect"] for e in events(audit) if e.get("tool") == "delete_all"] == ["deny"]


def test_redaction_reaches_the_tool() -> None:
    tools = Tools()
    script = Script(("send_email", {"to": "a@b.c", "body": "password hunter2"}), "sent")
    with bastion.Kernel.from_text(POLICY) as kernel:
        run(agent(kernel, script, tools))
    assert tools.calls == [("send_email", {"to": "a@b.c", "body": "[REDACTED]"})]
    assert script.tool_results() == ["sent to a@b.c"]


def test_post_tool_denial_replaces_the_result(audit: Path) -> None:
    tools, script = Tools(), Script(("lookup", {"key": "token"}), "ok")
    outputs: list[Any] = []

    async def go(kernel: bastion.Kernel) -> None:
        handler = agent(kernel, script, tools).run(user_msg="go")
        async for ev in handler.stream_events():
            if isinstance(ev, ToolCallResult):
                outputs.append(ev.tool_output)
        await handler

    with bastion.Kernel.from_text(POLICY, audit=audit) as kernel:
        asyncio.run(go(kernel))
    assert tools.calls == [("lookup", {"key": "token"})]  # it ran ...
    (seen,) = script.tool_results()  # ... but neither the model nor the run's output has it
    assert "SECRET" not in seen and "the result holds a secret" in seen
    (out,) = outputs
    assert out.is_error and "SECRET" not in str(out.raw_output)
    assert [e["status"] for e in events(audit) if e.get("kind") == "outcome"] == ["failed"]


# -- failing closed ------------------------------------------------------------------------------

class BrokenKernel(bastion.Kernel):
    def evaluate(self, action: bastion.Action) -> bastion.Decision:
        raise RuntimeError("policy engine down")

    async def aevaluate(self, action: bastion.Action) -> bastion.Decision:
        raise RuntimeError("policy engine down")


def test_an_exception_in_the_kernel_denies() -> None:
    tools, script = Tools(), Script(("lookup", {"key": "colour"}), "ok")
    kernel = BrokenKernel.from_text(POLICY)
    try:
        run(agent(kernel, script, tools))
        sync = govern_tools(tools.all, kernel)[2].call(key="colour")
    finally:
        kernel.close()
    assert tools.calls == []
    (seen,) = script.tool_results()
    assert "could not decide" in seen and "policy engine down" in seen
    assert sync.is_error and "policy engine down" in sync.content


def test_a_failing_fact_source_denies() -> None:
    tools, script = Tools(), Script(("lookup", {"key": "colour"}), "ok")

    def session() -> dict[str, Any]:
        raise LookupError("no session")

    with bastion.Kernel.from_text(POLICY) as kernel:
        run(agent(kernel, script, tools, session=session))
    assert tools.calls == [] and "no session" in script.tool_results()[0]


# -- stopping the run ----------------------------------------------------------------------------

def test_kill_switch_ends_the_run_under_watch() -> None:
    tools = Tools()
    script = Script(("lookup", {"key": "a"}), ("lookup", {"key": "b"}), "never")
    with bastion.Kernel.from_text(POLICY) as kernel:
        kernel.state.set_flag("kill:all", "test")
        with pytest.raises(RunStopped) as stopped:
            run(agent(kernel, script, tools))
    assert stopped.value.decision.code == "kill_switch"
    assert tools.calls == [] and len(script.seen) == 1  # the model was not asked again


def test_without_watch_the_agent_goes_on_but_nothing_runs() -> None:
    """Documents the limit: LlamaIndex agents turn tool exceptions into error results."""
    tools = Tools()
    script = Script(("lookup", {"key": "a"}), ("lookup", {"key": "b"}), "gave up")

    async def go(kernel: bastion.Kernel) -> Any:
        return await agent(kernel, script, tools).run(user_msg="go")

    with bastion.Kernel.from_text(POLICY) as kernel:
        kernel.state.set_flag("kill:all", "test")
        out = asyncio.run(go(kernel))
    assert str(out) == "gave up" and tools.calls == []
    assert "kill switch" in script.tool_results()[-1]


# -- approvals -----------------------------------------------------------------------------------

def test_approval_pauses_the_step_and_runs_after_approve(audit: Path) -> None:
    tools, script = Tools(), Script(("transfer", {"amount": 5000}), "moved it")
    asked: list[ApprovalRequired] = []

    async def go(kernel: bastion.Kernel) -> Any:
        handler = agent(kernel, script, tools, pause_on_approval=True).run(user_msg="pay")
        async for ev in handler.stream_events():
            if isinstance(ev, ApprovalRequired):
                asked.append(ev)
                assert tools.calls == []  # paused: nothing ran yet
                kernel.approve(ev.approval_id, by="alice")
                handler.ctx.send_event(ApprovalDecided(approval_id=ev.approval_id))
        return await handler

    with bastion.Kernel.from_text(POLICY, audit=audit) as kernel:
        out = asyncio.run(go(kernel))
    assert [a.tool for a in asked] == ["transfer"]
    assert tools.calls == [("transfer", {"amount": 5000})]
    assert script.tool_results() == ["moved 5000"] and str(out) == "moved it"
    effects = [e["effect"] for e in events(audit) if e.get("stage") == "pre_tool"]
    assert effects == ["require_approval", "allow"]


def test_a_refused_approval_denies() -> None:
    tools, script = Tools(), Script(("transfer", {"amount": 5000}), "ok")

    async def go(kernel: bastion.Kernel) -> Any:
        handler = agent(kernel, script, tools, pause_on_approval=True).run(user_msg="pay")

        def answer(ev: Any) -> None:
            if isinstance(ev, ApprovalRequired):
                kernel.refuse(ev.approval_id, by="bob")
                handler.ctx.send_event(ApprovalDecided(approval_id=ev.approval_id))

        return await watch(handler, on_event=answer)

    with bastion.Kernel.from_text(POLICY) as kernel:
        asyncio.run(go(kernel))
    assert tools.calls == []
    assert "not granted" in script.tool_results()[0]


def test_approval_without_pause_denies_then_a_retry_runs() -> None:
    tools = Tools()
    with bastion.Kernel.from_text(POLICY) as kernel:
        governed = govern_tools(tools.all, kernel, session={"id": "s1"})
        first = Script(("transfer", {"amount": 5000}), "waiting")
        run(FunctionAgent(tools=governed, llm=first.llm()))
        (seen,) = first.tool_results()
        assert tools.calls == [] and "needs human approval" in seen
        kernel.approve(seen.split("Approval id: ")[1].split(".")[0], by="alice")
        again = Script(("transfer", {"amount": 5000}), "done")
        run(FunctionAgent(tools=governed, llm=again.llm()))
    assert tools.calls == [("transfer", {"amount": 5000})]
    assert again.tool_results() == ["moved 5000"]


def test_pause_outside_a_workflow_denies() -> None:
    tools = Tools()
    with bastion.Kernel.from_text(POLICY) as kernel:
        transfer = govern_tools(tools.all, kernel, pause_on_approval=True)[3]
        out = asyncio.run(transfer.acall(amount=5000))
    assert tools.calls == [] and out.is_error and "needs human approval" in out.content


# -- the sync path and context-taking tools ------------------------------------------------------

def test_sync_call_allow_deny_redact_post_and_stop() -> None:
    tools = Tools()
    with bastion.Kernel.from_text(POLICY) as kernel:
        email, delete, lookup = govern_tools(tools.all, kernel)[:3]
        assert isinstance(email, GovernedTool)
        assert email.call(to="a@b.c", body="x").content == "sent to a@b.c"
        denied = delete.call(table="t")
        assert denied.is_error and "denied by policy" in denied.content
        hidden = lookup.call(key="token")
        assert hidden.is_error and "SECRET" not in hidden.content
        kernel.state.set_flag("kill:all", "test")
        with pytest.raises(RunStopped):
            lookup.call(key="a")
    assert tools.calls == [("send_email", {"to": "a@b.c", "body": "[REDACTED]"}),
                           ("lookup", {"key": "token"})]


def test_a_tool_that_takes_the_workflow_context_still_gets_it() -> None:
    tools, script = Tools(), Script(("whoami", {}), "ok")

    async def go(kernel: bastion.Kernel) -> None:
        fa = agent(kernel, script, tools)
        ctx = Context(fa)
        await ctx.store.set("user", "ada")
        await watch(fa.run(user_msg="who", ctx=ctx))

    with bastion.Kernel.from_text(POLICY) as kernel:
        asyncio.run(go(kernel))
    assert tools.calls == [("whoami", {})] and script.tool_results() == ["user ada"]


# -- the example ---------------------------------------------------------------------------------

def test_example_runs() -> None:
    root = Path(os.environ.get("BASTION_ROOT", Path(__file__).parents[3]))
    done = subprocess.run([sys.executable, str(root / "examples" / "llama_index_example.py")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "denied" in out and "[REDACTED]" in out and "run stopped" in out
