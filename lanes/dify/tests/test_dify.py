"""bastion.adapters.dify: a function-calling strategy on ``GovernedAgentStrategy``, run through
the dify_plugin SDK (loader, ``PluginExecutor``, ``Session``, backwards invocations over HTTP)
against a stand-in daemon with a scripted model (see conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import POLICY, FakeDaemon, Runner, call, decisions, load_strategy

from bastion import Action, Kernel
from bastion.adapters import RunStopped
from bastion.adapters.dify import Governed
from bastion.audit import read_events

AGENT = {"id": "dify-agent"}


def govern(runner: Runner, kernel: Kernel, **options: Any) -> None:
    options.setdefault("agent", AGENT)
    options.setdefault("session_from", lambda s: {"id": s.session.conversation_id})
    runner.strategy.governed = Governed(kernel, **options)


def shown(messages: list[Any]) -> str:
    """What the strategy streamed to Dify (and so to the user), as one string."""
    return json.dumps([m.model_dump(mode="json") for m in messages])


def test_allowed_tool_runs(runner: Runner, daemon: FakeDaemon, kernel: Kernel) -> None:
    govern(runner, kernel)
    out = runner.run(call("lookup", query="otter"), "all done")
    assert daemon.ran == [("lookup", {"query": "otter"})]
    assert "found otter" in daemon.said(1)
    assert "all done" in shown(out)
    [d] = decisions(kernel, "lookup")
    assert (d["effect"], d["agent"], d["session"]) == ("allow", "dify-agent", "conv-1")


def test_denied_tool_never_runs_and_model_sees_why(runner: Runner, daemon: FakeDaemon,
                                                     kernel: Kernel) -> None:
    govern(runner, kernel)
    runner.run(call("delete_db", name="prod"), "ok, I will not")
    assert daemon.ran == []
    assert "destructive operations are blocked" in daemon.said(1)
    [d] = decisions(kernel, "delete_db")
    assert d["effect"] == "deny" and d["rule_ids"] == ["no-delete"]


def test_redaction_reaches_the_tool(runner: Runner, daemon: FakeDaemon, kernel: Kernel) -> None:
    govern(runner, kernel)
    runner.run(call("send_email", to="a@example.com", body="card 4111"), "sent")
    assert daemon.ran == [("send_email", {"to": "a@example.com", "body": "[REDACTED]"})]


def test_post_tool_denial_replaces_the_result(runner: Runner, daemon: FakeDaemon,
                                              kernel: Kernel) -> None:
    govern(runner, kernel)
    out = runner.run(call("read_secret", path="id_rsa"), "done")
    assert daemon.ran == [("read_secret", {"path": "id_rsa"})]  # it ran; its result is withheld
    assert "private keys never reach the model" in daemon.said(1)
    assert "BEGIN PRIVATE KEY" not in daemon.said(1)
    assert "BEGIN PRIVATE KEY" not in shown(out)
    post = decisions(kernel, "read_secret", stage="post_tool")
    assert [d["effect"] for d in post] == ["deny"]


class BrokenKernel(Kernel):
    def evaluate(self, action: Action) -> Any:
        raise RuntimeError("kernel exploded")


def test_exception_in_the_kernel_denies(runner: Runner, daemon: FakeDaemon,
                                        tmp_path: Path) -> None:
    with BrokenKernel.from_text(POLICY, audit=tmp_path / "a.db") as broken:
        govern(runner, broken)
        runner.run(call("lookup", query="otter"), "done")
    assert daemon.ran == []
    assert "bastion could not decide it" in daemon.said(1)
    assert "kernel exploded" in daemon.said(1)


def test_exception_in_an_agent_callable_denies(runner: Runner, daemon: FakeDaemon,
                                               kernel: Kernel) -> None:
    def agent_from(strategy: Any) -> dict[str, str]:
        raise LookupError("no such agent")

    govern(runner, kernel, agent=None, agent_from=agent_from)
    runner.run(call("lookup", query="otter"), "done")
    assert daemon.ran == []
    assert "no such agent" in daemon.said(1)


def test_no_gate_denies_every_tool(runner: Runner, daemon: FakeDaemon) -> None:
    runner.run(call("lookup", query="otter"), "done")
    assert daemon.ran == []
    assert "no bastion gate is set" in daemon.said(1)


def test_kill_switch_stops_the_run(runner: Runner, daemon: FakeDaemon, kernel: Kernel) -> None:
    govern(runner, kernel)
    kernel.state.set_flag("kill:all", "test")
    # the strategy catches tool errors (as Dify's official ones do); the run still ends
    with pytest.raises(RunStopped) as info:
        runner.run(call("lookup", query="otter"), "done")
    assert info.value.decision.code == "kill_switch"
    assert daemon.ran == []
    assert len(daemon.prompts) == 1  # the model never got another turn


def test_approval_denies_then_runs_once_granted(runner: Runner, daemon: FakeDaemon,
                                                kernel: Kernel) -> None:
    govern(runner, kernel)
    runner.run(call("pay", amount="50"), "waiting")
    assert daemon.ran == []
    assert "needs human approval" in daemon.said(1)
    [pending] = kernel.pending_approvals()
    assert pending.id in daemon.said(1)
    kernel.approve(pending.id, by="alice")
    runner.run(call("pay", amount="50"), "paid")
    assert daemon.ran == [("pay", {"amount": "50"})]
    assert "paid 50" in daemon.said(-1)


def test_tool_errors_are_recorded(runner: Runner, daemon: FakeDaemon, kernel: Kernel) -> None:
    govern(runner, kernel)
    runner.run(call("explode", why="disk on fire"), "sorry")
    assert "disk on fire" in daemon.said(1)  # the SDK raised it; the strategy showed it
    kernel.audit.flush()
    outcomes = [e for e in read_events(kernel.audit.path) if e["kind"] == "outcome"]
    assert [o["status"] for o in outcomes] == ["exception"]
    assert "disk on fire" in outcomes[0]["error"]


def test_qualified_tool_names(runner: Runner, daemon: FakeDaemon, kernel: Kernel) -> None:
    govern(runner, kernel, qualified=True)
    runner.run(call("lookup", query="otter"), "done")
    assert daemon.ran == []  # the policy allows "lookup", not "demo/lookup"
    [d] = decisions(kernel)
    assert d["tool"] == "demo/lookup" and d["code"] == "default"


def test_identities_derived_from_the_strategy(runner: Runner, daemon: FakeDaemon,
                                              kernel: Kernel) -> None:
    govern(runner, kernel, agent=None, agent_from=lambda s: {"id": s.runtime.user_id})
    runner.run(call("lookup", query="otter"), "done", conversation_id="conv-42")
    [d] = decisions(kernel, "lookup")
    assert (d["agent"], d["session"]) == ("user-1", "conv-42")


def test_importing_the_class_into_a_strategy_file_breaks_loading(tmp_path: Path) -> None:
    # why the docs say "import the module": the SDK loads the one AgentStrategy subclass a file has
    source = (Path(__file__).parent / "strategies" / "function_calling.py").read_text()
    bad = tmp_path / "bad_strategy.py"
    bad.write_text(source.replace(
        "import bastion.adapters.dify as governed",
        "import bastion.adapters.dify as governed\n"
        "from bastion.adapters.dify import GovernedAgentStrategy"))
    from dify_plugin.core.utils.class_loader import load_single_subclass_from_source
    from dify_plugin.interfaces.agent import AgentStrategy

    with pytest.raises(Exception, match="Multiple subclasses"):
        load_single_subclass_from_source(module_name="bad_strategy", script_path=str(bad),
                                         parent_type=AgentStrategy)
    assert load_strategy().__name__ == "FunctionCallingStrategy"


def test_example_runs() -> None:
    root = Path(os.environ.get("BASTION_ROOT", Path(__file__).resolve().parents[3]))
    done = subprocess.run([sys.executable, str(root / "examples" / "dify_example.py")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"})
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    by_step = {line["step"]: line for line in lines}
    assert by_step["lookup"]["ran"] is True
    assert by_step["delete_db"]["ran"] is False
    assert "blocked" in by_step["delete_db"]["model_saw"]
    assert by_step["send_email"]["tool_got"]["body"] == "[REDACTED]"
    assert by_step["kill"]["stopped"] is True
