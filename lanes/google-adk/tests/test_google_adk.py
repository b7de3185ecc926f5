"""The Google ADK adapter on a real ``LlmAgent`` run by ``InMemoryRunner`` with a scripted model."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from google.adk.agents import LlmAgent
from google.adk.apps import App
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import InMemoryRunner
from google.genai import types
from pydantic import Field

import bastion
from bastion.adapters.google_adk import BastionPlugin
from bastion.audit import read_events

POLICY = """
version: 1
name: adk-lane
default: deny
rules:
  - id: allow-tools
    tools: [lookup, send_email, read_file, transfer]
    effect: allow
  - id: no-delete
    tools: [delete_file]
    effect: deny
    message: deleting files is blocked
  - id: mask-body
    tools: [send_email]
    effect: redact
    redact: [args.body]
  - id: big-transfer
    tools: [transfer]
    when: args.amount > 1000
    effect: require_approval
  - id: results
    stage: post_tool
    effect: allow
  - id: no-secrets
    stage: post_tool
    tools: [read_file]
    when: string(result).contains("SECRET")
    effect: deny
    message: the result holds a secret
"""


class ScriptedModel(BaseLlm):
    """Each turn asks for the scripted function calls; after the script, answers with text.
    ``requests`` keeps every request, so tests can read the function responses it was shown."""

    model: str = "scripted"
    script: list[list[tuple[str, dict[str, Any]]]] = Field(default_factory=list)
    requests: list[LlmRequest] = Field(default_factory=list)

    async def generate_content_async(self, llm_request: LlmRequest, stream: bool = False
                                     ) -> AsyncGenerator[LlmResponse, None]:
        self.requests.append(llm_request)
        turn = len(self.requests) - 1
        if turn < len(self.script):
            parts = [types.Part(function_call=types.FunctionCall(name=n, args=a,
                                                                 id=f"fc-{turn}-{i}"))
                     for i, (n, a) in enumerate(self.script[turn])]
        else:
            parts = [types.Part(text="done")]
        usage = types.GenerateContentResponseUsageMetadata(prompt_token_count=1,
                                                           candidates_token_count=1,
                                                           total_token_count=2)
        yield LlmResponse(content=types.Content(role="model", parts=parts), usage_metadata=usage)

    def responses(self, turn: int) -> list[dict[str, Any]]:
        """The function responses the model saw at the start of ``turn``."""
        return [dict(p.function_response.response or {})
                for c in self.requests[turn].contents for p in c.parts or []
                if p.function_response is not None]


class Tools:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def all(self) -> list[Any]:
        calls = self.calls

        def lookup(q: str) -> str:
            """Look something up."""
            calls.append(("lookup", {"q": q}))
            return "42 items"

        def send_email(to: str, body: str) -> str:
            """Send an e-mail."""
            calls.append(("send_email", {"to": to, "body": body}))
            return "sent"

        def delete_file(path: str) -> str:
            """Delete a file."""
            calls.append(("delete_file", {"path": path}))
            return "deleted"

        def transfer(amount: int) -> str:
            """Move money."""
            calls.append(("transfer", {"amount": amount}))
            return "moved"

        def read_file(path: str) -> dict[str, Any]:
            """Read a file."""
            calls.append(("read_file", {"path": path}))
            return {"text": "the key is SECRET-123"}

        return [lookup, send_email, delete_file, transfer, read_file]


def turn(*calls: tuple[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return list(calls)


class Harness:
    def __init__(self, kernel: bastion.Kernel, script: list[Any], *, agent_level: bool = False,
                 **opts: Any) -> None:
        self.tools = Tools()
        self.model = ScriptedModel(script=script, requests=[])
        self.plugin = BastionPlugin(kernel, **opts)
        callbacks = ({"before_tool_callback": self.plugin.before_tool,
                      "after_tool_callback": self.plugin.after_tool} if agent_level else {})
        self.agent = LlmAgent(name="helper", model=self.model, tools=self.tools.all(),
                              **callbacks)
        app = App(name="lane", root_agent=self.agent,
                  plugins=[] if agent_level else [self.plugin])
        self.runner = InMemoryRunner(app=app)
        self.session_id = ""

    async def arun(self, message: types.Content | None = None) -> list[Any]:
        if not self.session_id:
            session = await self.runner.session_service.create_session(app_name="lane",
                                                                       user_id="u1")
            self.session_id = session.id
        msg = message or types.Content(role="user", parts=[types.Part(text="go")])
        return [e async for e in self.runner.run_async(user_id="u1", session_id=self.session_id,
                                                       new_message=msg)]

    def run(self, use_async: bool = True) -> list[Any]:
        if use_async:
            return asyncio.run(self.arun())
        session = asyncio.run(self.runner.session_service.create_session(app_name="lane",
                                                                         user_id="u1"))
        self.session_id = session.id
        return list(self.runner.run(user_id="u1", session_id=session.id,
                                    new_message=types.Content(role="user",
                                                              parts=[types.Part(text="go")])))


@pytest.fixture
def kernel(tmp_path: Path) -> Any:
    with bastion.Kernel.from_text(POLICY, audit=tmp_path / "audit.db") as k:
        yield k


MODES = [pytest.param(True, id="async"), pytest.param(False, id="sync")]


@pytest.mark.parametrize("use_async", MODES)
def test_allowed_tool_runs_and_model_sees_result(kernel: Any, use_async: bool) -> None:
    h = Harness(kernel, [turn(("lookup", {"q": "x"}))])
    h.run(use_async)
    assert h.tools.calls == [("lookup", {"q": "x"})]
    assert h.model.responses(1) == [{"result": "42 items"}]
    kernel.audit.flush()
    events = list(read_events(kernel.audit.path))
    decisions = [e for e in events if e["kind"] == "decision"]
    assert [(e["stage"], e["effect"]) for e in decisions] == [("pre_tool", "allow"),
                                                               ("post_tool", "allow")]
    assert {e["agent"] for e in decisions} == {"helper"}  # the ADK agent's name by default
    assert {e["session"] for e in decisions} == {h.session_id}  # the ADK session by default
    assert [e["status"] for e in events if e["kind"] == "outcome"] == ["succeeded"]


@pytest.mark.parametrize("use_async", MODES)
def test_denied_tool_never_runs_and_model_sees_why(kernel: Any, use_async: bool) -> None:
    h = Harness(kernel, [turn(("delete_file", {"path": "/etc"}))])
    h.run(use_async)
    assert h.tools.calls == []
    [seen] = h.model.responses(1)
    assert "deleting files is blocked" in seen["error"]


@pytest.mark.parametrize("agent_level", [False, True])
def test_redaction_reaches_the_tool(kernel: Any, agent_level: bool) -> None:
    h = Harness(kernel, [turn(("send_email", {"to": "a@example.com", "body": "card 4111"}))],
                agent_level=agent_level)
    h.run()
    assert h.tools.calls == [("send_email", {"to": "a@example.com", "body": "[REDACTED]"})]


@pytest.mark.parametrize("agent_level", [False, True])
def test_post_tool_deny_replaces_result(kernel: Any, agent_level: bool) -> None:
    h = Harness(kernel, [turn(("read_file", {"path": "k"}))], agent_level=agent_level)
    events = h.run()
    assert h.tools.calls == [("read_file", {"path": "k"})]
    [seen] = h.model.responses(1)
    assert "the result holds a secret" in seen["error"] and "SECRET-123" not in str(seen)
    assert "SECRET-123" not in str([e.content for e in events])
    kernel.audit.flush()
    assert [e["status"] for e in read_events(kernel.audit.path)
            if e["kind"] == "outcome"] == ["failed"]


def test_parallel_calls_are_decided_one_by_one(kernel: Any) -> None:
    h = Harness(kernel, [turn(("delete_file", {"path": "/"}), ("lookup", {"q": "y"}),
                              ("read_file", {"path": "k"}))])
    h.run()
    assert sorted(h.tools.calls) == [("lookup", {"q": "y"}), ("read_file", {"path": "k"})]
    seen = h.model.responses(1)
    assert {"result": "42 items"} in seen and "SECRET" not in str(seen)
    assert sum("error" in r for r in seen) == 2


class BrokenKernel(bastion.Kernel):
    def evaluate(self, action: Any) -> Any:
        raise RuntimeError("boom")

    async def aevaluate(self, action: Any) -> Any:
        raise RuntimeError("boom")


def test_kernel_error_denies() -> None:
    with BrokenKernel.from_text(POLICY) as k:
        h = Harness(k, [turn(("lookup", {"q": "x"}))])
        h.run()
    assert h.tools.calls == []
    assert "could not decide" in h.model.responses(1)[0]["error"]


def test_session_callable_error_denies(kernel: Any) -> None:
    def session(tool_context: Any) -> dict[str, Any]:
        raise KeyError("no session")
    h = Harness(kernel, [turn(("lookup", {"q": "x"}))], session_from=session)
    h.run()
    assert h.tools.calls == [] and "KeyError" in h.model.responses(1)[0]["error"]


def test_session_from_gets_tool_context(kernel: Any) -> None:
    h = Harness(kernel, [turn(("lookup", {"q": "x"}))], agent={"id": "fixed-agent"},
                session_from=lambda tc: {"id": f"{tc.user_id}/{tc.session.id}"})
    h.run()
    kernel.audit.flush()
    decisions = [e for e in read_events(kernel.audit.path) if e["kind"] == "decision"]
    assert {(e["agent"], e["session"]) for e in decisions} == {("fixed-agent",
                                                                 f"u1/{h.session_id}")}


@pytest.mark.parametrize("use_async", MODES)
def test_kill_switch_stops_the_run(kernel: Any, use_async: bool) -> None:
    kernel.state.set_flag("kill:all", "test")
    h = Harness(kernel, [turn(("lookup", {"q": "x"})), turn(("lookup", {"q": "y"}))])
    events = h.run(use_async)
    assert h.tools.calls == []
    assert len(h.model.requests) == 1  # the model got no further turn
    [response] = [p.function_response.response for e in events
                  for p in (e.content.parts if e.content else []) if p.function_response]
    assert "stopped by bastion" in response["error"]
    assert any(e.actions.escalate for e in events)


def test_approval_pauses_and_resumes_after_grant(kernel: Any) -> None:
    h = Harness(kernel, [turn(("transfer", {"amount": 5000}))])
    events = h.run()
    assert h.tools.calls == []
    [request] = [p.function_call for e in events for p in (e.content.parts if e.content else [])
                 if p.function_call and p.function_call.name == "adk_request_confirmation"]
    approval_id = request.args["toolConfirmation"]["payload"]["approval_id"]
    assert len(h.model.requests) == 1  # paused: the model was not asked again

    kernel.approve(approval_id, by="alice")
    answer = types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
        name="adk_request_confirmation", id=request.id, response={"confirmed": True}))])
    asyncio.run(h.arun(answer))
    assert h.tools.calls == [("transfer", {"amount": 5000})]
    assert {"result": "moved"} in h.model.responses(1)


def test_approval_confirmed_in_adk_but_not_granted_in_bastion_denies(kernel: Any) -> None:
    h = Harness(kernel, [turn(("transfer", {"amount": 5000}))])
    events = h.run()
    [request] = [p.function_call for e in events for p in (e.content.parts if e.content else [])
                 if p.function_call and p.function_call.name == "adk_request_confirmation"]
    answer = types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
        name="adk_request_confirmation", id=request.id, response={"confirmed": True}))])
    asyncio.run(h.arun(answer))
    assert h.tools.calls == []
    assert "is not granted" in str(h.model.responses(1))


def test_approval_rejected_in_adk_denies(kernel: Any) -> None:
    h = Harness(kernel, [turn(("transfer", {"amount": 5000}))])
    events = h.run()
    [request] = [p.function_call for e in events for p in (e.content.parts if e.content else [])
                 if p.function_call and p.function_call.name == "adk_request_confirmation"]
    kernel.approve(request.args["toolConfirmation"]["payload"]["approval_id"], by="alice")
    answer = types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
        name="adk_request_confirmation", id=request.id, response={"confirmed": False}))])
    asyncio.run(h.arun(answer))
    assert h.tools.calls == []
    assert "rejected by the user" in str(h.model.responses(1))


def test_example_runs() -> None:
    root = Path(os.environ.get("BASTION_ROOT", Path(__file__).parents[3]))
    out = subprocess.run([sys.executable, str(root / "examples" / "google_adk_example.py")],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "lookup ran" in out and "delete_file: denied" in out and "[REDACTED]" in out
    assert "delete_file ran" not in out
