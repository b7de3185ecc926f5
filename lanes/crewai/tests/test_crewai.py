"""bastion.adapters.crewai on real CrewAI crews driven by a scripted model (no network)."""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    FINAL_NATIVE,
    FINAL_REACT,
    ScriptedLLM,
    Tools,
    crew_for,
    decisions,
    native,
    react,
)
from crewai.hooks import (
    get_after_tool_call_hooks,
    get_before_llm_call_hooks,
    get_before_tool_call_hooks,
    register_before_tool_call_hook,
    unregister_before_tool_call_hook,
)

from bastion import Action, Kernel
from bastion.adapters import RunStopped
from bastion.adapters.crewai import CrewRunStopped, Governed

AGENT = {"id": "clerk-1"}
SESSION = {"id": "s-1"}
STYLES = {"native": (native, FINAL_NATIVE, True), "react": (react, FINAL_REACT, False)}


def run(kernel: Kernel | Governed, tools: Tools, style: str, *steps: Any, **options: Any
        ) -> tuple[ScriptedLLM, Any]:
    """Kick off a one-agent crew whose model makes the scripted tool calls, then finishes."""
    call, final, is_native = STYLES[style]
    llm = ScriptedLLM(model="scripted", native=is_native,
                      script=[call(name, **args) for name, args in steps] + [final])
    governed = (kernel if isinstance(kernel, Governed) else
                Governed(kernel, **{"agent": AGENT, "session": SESSION, **options}))
    with governed:
        out = crew_for(llm, tools).kickoff()
    return llm, out


@pytest.mark.parametrize("style", ["native", "react"])
def test_allowed_tool_runs(kernel: Kernel, tools: Tools, style: str) -> None:
    llm, out = run(kernel, tools, style, ("lookup", {"query": "otter"}))
    assert tools.ran == [("lookup", {"query": "otter"})]
    assert "found otter" in llm.text_after(1)
    assert out.raw == "all done"
    [d] = decisions(kernel, "lookup")
    assert (d["effect"], d["agent"], d["session"]) == ("allow", "clerk-1", "s-1")


@pytest.mark.parametrize("style", ["native", "react"])
def test_denied_tool_never_runs_and_model_sees_why(kernel: Kernel, tools: Tools,
                                                     style: str) -> None:
    llm, _ = run(kernel, tools, style, ("delete_db", {"name": "prod"}))
    assert tools.ran == []
    seen = llm.text_after(1)
    assert "destructive operations are blocked" in seen
    assert "Tool execution blocked by hook" not in seen  # CrewAI's own text was replaced
    [d] = decisions(kernel, "delete_db")
    assert d["effect"] == "deny" and d["rule_ids"] == ["no-delete"]


@pytest.mark.parametrize("style", ["native", "react"])
def test_redaction_reaches_the_tool(kernel: Kernel, tools: Tools, style: str) -> None:
    run(kernel, tools, style, ("send_email", {"to": "a@example.com", "body": "card 4111"}))
    assert tools.ran == [("send_email", {"to": "a@example.com", "body": "[REDACTED]"})]


@pytest.mark.parametrize("style", ["native", "react"])
def test_post_tool_denial_replaces_the_result(kernel: Kernel, tools: Tools, style: str) -> None:
    llm, _ = run(kernel, tools, style, ("read_secret", {"path": "id_rsa"}))
    assert tools.ran == [("read_secret", {"path": "id_rsa"})]  # it ran; its result is withheld
    seen = " ".join(llm.text_after(i) for i in range(len(llm.seen)))
    assert "private keys never reach the model" in seen
    assert "BEGIN PRIVATE KEY" not in seen
    post = decisions(kernel, "read_secret", stage="post_tool")
    assert [d["effect"] for d in post] == ["deny"]


class BrokenKernel(Kernel):
    def evaluate(self, action: Action) -> Any:
        raise RuntimeError("kernel exploded")


def test_exception_in_the_kernel_denies(tmp_path: Path, tools: Tools) -> None:
    from conftest import POLICY

    with BrokenKernel.from_text(POLICY, audit=tmp_path / "a.db") as broken:
        llm, _ = run(broken, tools, "native", ("lookup", {"query": "otter"}))
    assert tools.ran == []
    assert "bastion could not decide it" in llm.text_after(1)
    assert "kernel exploded" in llm.text_after(1)


def test_exception_in_an_agent_callable_denies(kernel: Kernel, tools: Tools) -> None:
    def agent_from(ctx: Any) -> dict[str, str]:
        raise LookupError("no such agent")

    llm, _ = run(kernel, tools, "native", ("lookup", {"query": "otter"}), agent_from=agent_from)
    assert tools.ran == []
    assert "no such agent" in llm.text_after(1)


def test_crewai_swallows_hook_errors_so_ours_deny_themselves(kernel: Kernel,
                                                              tools: Tools) -> None:
    # what CrewAI does with a hook that raises: it runs the tool anyway (fail open) ...
    def raising(ctx: Any) -> None:
        raise RuntimeError("buggy hook")

    register_before_tool_call_hook(raising)
    try:
        llm = ScriptedLLM(model="scripted", script=[native("lookup", query="x"), FINAL_NATIVE])
        crew_for(llm, tools).kickoff()
    finally:
        unregister_before_tool_call_hook(raising)
    assert tools.ran == [("lookup", {"query": "x"})]
    # ... so our hook turns its own errors into a deny, even on a malformed context
    governed = Governed(kernel)
    assert governed.before_tool_call(object()) is False
    assert "withheld" in (governed.after_tool_call(object()) or "")


@pytest.mark.parametrize("style", ["native", "react"])
def test_kill_switch_stops_the_run(kernel: Kernel, tools: Tools, style: str) -> None:
    kernel.state.set_flag("kill:all", "test")
    llm = ScriptedLLM(model="scripted", native=STYLES[style][2],
                      script=[STYLES[style][0]("lookup", query="otter"), STYLES[style][1]])
    with Governed(kernel, agent=AGENT, session=SESSION), pytest.raises(RunStopped) as info:
        crew_for(llm, tools).kickoff()
    assert isinstance(info.value, CrewRunStopped)
    assert info.value.decision.code == "kill_switch"
    assert tools.ran == []
    assert len(llm.seen) == 1  # the model never got another turn
    [d] = decisions(kernel, "lookup")
    assert d["code"] == "kill_switch"


def test_approval_without_a_human_denies_then_runs_once_granted(kernel: Kernel,
                                                                 tools: Tools) -> None:
    governed = Governed(kernel, agent=AGENT, session=SESSION)  # it remembers the approval id
    llm, _ = run(governed, tools, "native", ("pay", {"amount": 50}))
    assert tools.ran == []
    seen = llm.text_after(1)
    assert "needs human approval" in seen
    [pending] = kernel.pending_approvals()
    assert pending.id in seen
    kernel.approve(pending.id, by="alice")
    run(governed, tools, "native", ("pay", {"amount": 50}))
    assert tools.ran == [("pay", {"amount": 50})]


@pytest.mark.parametrize(("answer", "runs"), [("approve", True), ("no thanks", False)])
def test_approval_at_the_console(kernel: Kernel, tools: Tools, monkeypatch: pytest.MonkeyPatch,
                                 answer: str, runs: bool) -> None:
    prompts: list[str] = []
    monkeypatch.setattr(builtins, "input", lambda *a: prompts.append("asked") or answer)
    llm, _ = run(kernel, tools, "native", ("pay", {"amount": 50}), human="bob")
    assert prompts == ["asked"]
    assert (tools.ran == [("pay", {"amount": 50})]) is runs
    assert ("paid 50" in llm.text_after(1)) is runs
    kernel.audit.flush()
    from bastion.audit import read_events

    approvals = [e for e in read_events(kernel.audit.path) if e["kind"] == "approval"]
    assert approvals and approvals[-1].get("by") == "bob"


def test_async_kickoff(kernel: Kernel, tools: Tools) -> None:
    llm = ScriptedLLM(model="scripted", script=[
        native("lookup", query="otter"), native("delete_db", name="prod"),
        native("send_email", to="a@example.com", body="secret"), FINAL_NATIVE])

    async def main() -> Any:
        with Governed(kernel, agent=AGENT, session=SESSION):
            return await crew_for(llm, tools).akickoff()

    out = asyncio.run(main())
    assert out.raw == "all done"
    assert tools.ran == [("lookup", {"query": "otter"}),
                         ("send_email", {"to": "a@example.com", "body": "[REDACTED]"})]
    assert "destructive operations are blocked" in llm.text_after(2)


def test_standalone_agent_kickoff(kernel: Kernel, tools: Tools) -> None:
    from crewai import Agent

    llm = ScriptedLLM(model="scripted", script=[
        native("delete_db", name="prod"), native("send_email", to="a@example.com", body="x"),
        FINAL_NATIVE])
    agent = Agent(role="clerk", goal="help", backstory="a careful clerk", llm=llm,
                  tools=tools.all, verbose=False)
    with Governed(kernel, agent=AGENT, session=SESSION):
        out = agent.kickoff("do the job")
    assert out.raw == "all done"
    assert tools.ran == [("send_email", {"to": "a@example.com", "body": "[REDACTED]"})]
    assert "destructive operations are blocked" in llm.text_after(1)


def test_session_derived_from_the_crew(kernel: Kernel, tools: Tools) -> None:
    llm = ScriptedLLM(model="scripted", script=[native("lookup", query="otter"), FINAL_NATIVE])
    crew = crew_for(llm, tools)
    with Governed(kernel, agent_from=lambda ctx: {"id": ctx.agent.role},
                  session_from=lambda ctx: {"id": str(ctx.crew.id)}):
        crew.kickoff()
    [d] = decisions(kernel, "lookup")
    assert (d["agent"], d["session"]) == ("clerk", str(crew.id))


def test_install_and_uninstall_leave_no_hooks(kernel: Kernel) -> None:
    before = (get_before_tool_call_hooks(), get_after_tool_call_hooks(),
              get_before_llm_call_hooks())
    governed = Governed(kernel)
    with governed:
        assert governed.before_tool_call in get_before_tool_call_hooks()
        assert governed.after_tool_call in get_after_tool_call_hooks()
        assert governed.before_llm_call in get_before_llm_call_hooks()
    assert (get_before_tool_call_hooks(), get_after_tool_call_hooks(),
            get_before_llm_call_hooks()) == before


def test_example_runs() -> None:
    root = Path(os.environ.get("BASTION_ROOT", Path(__file__).resolve().parents[3]))
    done = subprocess.run([sys.executable, str(root / "examples" / "crewai_example.py")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    by_step = {line["step"]: line for line in lines}
    assert by_step["lookup"]["ran"] is True
    assert by_step["delete_db"]["ran"] is False
    assert "blocked" in by_step["delete_db"]["model_saw"]
    assert by_step["send_email"]["tool_got"]["body"] == "[REDACTED]"
    assert by_step["kill"]["stopped"] is True
