"""A stand-in for Dify's plugin daemon, and an agent strategy run through the SDK's own code.

There is no Dify server here. What is real: the ``dify_plugin`` SDK classes end to end — the
strategy file is loaded with the SDK's loader, run through ``PluginExecutor.invoke_agent_strategy``
with a real ``Session`` in serverless mode, and its model and tool calls travel over HTTP through
the SDK's backwards-invocation client. What is faked: the other end of that HTTP connection,
``FakeDaemon``, which answers ``POST /backwards-invocation/transaction`` the way the daemon
does: model calls from a script (recording the prompt messages it was sent), tool calls by
running local Python functions (recording what they received).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue
from typing import Any

import dify_plugin  # noqa: F401  # the SDK applies gevent's monkey patching on import
import pytest
from dify_plugin.config.config import DifyPluginEnv, InstallMethod
from dify_plugin.core.entities.plugin.request import AgentInvokeRequest
from dify_plugin.core.plugin_executor import PluginExecutor
from dify_plugin.core.runtime import Session
from dify_plugin.core.server.serverless.request_reader import ServerlessRequestReader
from dify_plugin.core.server.serverless.response_writer import ServerlessResponseWriter
from dify_plugin.core.utils.class_loader import load_single_subclass_from_source
from dify_plugin.interfaces.agent import AgentStrategy
from gevent.pywsgi import WSGIServer

from bastion import Kernel
from bastion.audit import read_events

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

HERE = Path(__file__).parent

POLICY = """\
version: 1
rules:
  - id: reads
    tools: [lookup, read_secret, explode]
    effect: allow
  - id: mail
    tools: [send_email]
    effect: allow
  - id: mask-body
    tools: [send_email]
    effect: redact
    redact: [args.body]
  - id: no-delete
    tools: [delete_db]
    effect: deny
    message: destructive operations are blocked
  - id: pay
    tools: [pay]
    effect: require_approval
    message: payments need a human
  - id: results
    stage: post_tool
    effect: allow
  - id: no-keys
    stage: post_tool
    tools: [read_secret]
    when: "string(result).contains('BEGIN PRIVATE KEY')"
    effect: deny
    message: private keys never reach the model
"""


def call(tool_name: str, /, **args: Any) -> dict[str, Any]:
    """A scripted model reply that calls one tool."""
    return {"tool": tool_name, "args": args}


class FakeDaemon:
    """The daemon's backwards-invocation endpoint, serving a scripted model and local tools."""

    def __init__(self, tools: dict[str, Callable[..., Any]]):
        self.tools = tools
        self.script: list[dict[str, Any] | str] = []
        self.prompts: list[list[dict[str, Any]]] = []  # prompt messages of each model call
        self.ran: list[tuple[str, dict[str, Any]]] = []  # tool calls that reached a tool
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        envelope = json.loads(environ["wsgi.input"].read(size))
        session_id = envelope["session_id"]
        invoke = envelope["data"]["data"]  # {"type", "backwards_request_id", "request"}
        rid, request = invoke["backwards_request_id"], invoke["request"]

        def line(event: str, data: Any = None, message: str = "") -> bytes:
            return (json.dumps({"session_id": session_id, "event": "backwards_response",
                                "data": {"backwards_request_id": rid, "event": event,
                                         "message": message, "data": data}}) + "\n").encode()

        start_response("200 OK", [("Content-Type", "application/x-ndjson")])
        if invoke["type"] == "llm":
            self.prompts.append(request["prompt_messages"])
            return [line("response", self._chunk(self.script.pop(0))), line("end")]
        if invoke["type"] == "tool":
            name, params = request["tool"], request["tool_parameters"]
            self.ran.append((name, params))
            try:
                value = self.tools[name](**params)
            except Exception as exc:
                return [line("error", message=f"{type(exc).__name__}: {exc}")]
            message = ({"type": "json", "message": {"json_object": value}}
                       if isinstance(value, dict) else
                       {"type": "text", "message": {"text": str(value)}})
            return [line("response", message), line("end")]
        return [line("error", message=f"unexpected invocation {invoke['type']!r}")]

    @staticmethod
    def _chunk(reply: dict[str, Any] | str) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "", "tool_calls": []}
        if isinstance(reply, str):
            message["content"] = reply
        else:
            message["tool_calls"] = [{"id": f"call_{reply['tool']}", "type": "function",
                                      "function": {"name": reply["tool"],
                                                   "arguments": json.dumps(reply["args"])}}]
        return {"model": "scripted", "prompt_messages": [],
                "delta": {"index": 0, "message": message, "usage": None,
                          "finish_reason": "stop"}}

    def said(self, turn: int) -> str:
        """Everything the model was sent in call ``turn`` (0-based), as one string."""
        return json.dumps(self.prompts[turn])

    def close(self) -> None:
        self.server.stop()


def tool_entity(name: str, *params: str) -> dict[str, Any]:
    """A tool as Dify hands it to an agent strategy (the ``tools`` parameter)."""
    return {
        "identity": {"author": "bastion", "name": name, "label": {"en_US": name},
                     "provider": "demo"},
        "parameters": [{"name": p, "label": {"en_US": p}, "human_description": {"en_US": p},
                        "type": "string", "form": "llm", "llm_description": p,
                        "required": True} for p in params],
        "description": {"human": {"en_US": name}, "llm": f"the {name} tool"},
        "provider_type": "builtin",
        "runtime_parameters": {},
    }


TOOLS = [tool_entity("lookup", "query"), tool_entity("send_email", "to", "body"),
         tool_entity("delete_db", "name"), tool_entity("pay", "amount"),
         tool_entity("read_secret", "path"), tool_entity("explode", "why")]


def local_tools() -> dict[str, Callable[..., Any]]:
    def explode(why: str) -> str:
        raise OSError(why)

    return {
        "lookup": lambda query: f"found {query}",
        "send_email": lambda to, body: {"sent_to": to, "body": body},
        "delete_db": lambda name: "deleted",
        "pay": lambda amount: f"paid {amount}",
        "read_secret": lambda path: "-----BEGIN PRIVATE KEY-----\nMIIEvQ...",
        "explode": explode,
    }


class Registration:
    """The one method of ``PluginRegistration`` that ``invoke_agent_strategy`` uses."""

    def __init__(self, strategy: type[AgentStrategy]):
        self.strategy = strategy

    def get_agent_strategy_cls(self, provider: str, agent: str) -> type[AgentStrategy] | None:
        return self.strategy if (provider, agent) == ("bastion", "function_calling") else None


def load_strategy() -> type[AgentStrategy]:
    """The strategy class, loaded from its file the way the SDK loads a plugin's strategies."""
    return load_single_subclass_from_source(
        module_name="strategies.function_calling",
        script_path=str(HERE / "strategies" / "function_calling.py"),
        parent_type=AgentStrategy)


class Runner:
    """Runs the strategy through ``PluginExecutor`` against a ``FakeDaemon``."""

    def __init__(self, daemon: FakeDaemon):
        self.daemon = daemon
        self.strategy = load_strategy()
        self.executor = PluginExecutor(DifyPluginEnv(), Registration(self.strategy))

    def session(self, conversation_id: str = "conv-1") -> Session:
        return Session(session_id="req-1", executor=ThreadPoolExecutor(max_workers=1),
                       reader=ServerlessRequestReader(host="127.0.0.1", port=0),
                       writer=ServerlessResponseWriter(Queue()),
                       install_method=InstallMethod.Serverless,
                       dify_plugin_daemon_url=self.daemon.url,
                       conversation_id=conversation_id, app_id="app-1")

    def run(self, *script: dict[str, Any] | str, conversation_id: str = "conv-1"
            ) -> list[Any]:
        """The messages the strategy yields while the model plays ``script``."""
        self.daemon.script = list(script)
        request = AgentInvokeRequest(
            user_id="user-1", agent_strategy_provider="bastion", agent_strategy="function_calling",
            agent_strategy_params={
                "query": "do the job", "tools": TOOLS, "maximum_iterations": 5,
                "model": {"provider": "fake", "model": "scripted", "mode": "chat",
                          "completion_params": {}, "history_prompt_messages": []}})
        return list(self.executor.invoke_agent_strategy(self.session(conversation_id), request))


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    d = FakeDaemon(local_tools())
    yield d
    d.close()


@pytest.fixture
def runner(daemon: FakeDaemon) -> Iterator[Runner]:
    r = Runner(daemon)
    yield r
    r.strategy.governed = None


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    with Kernel.from_text(POLICY, audit=tmp_path / "audit.db", state=tmp_path / "state.db") as k:
        yield k


def decisions(kernel: Kernel, tool_name: str | None = None, stage: str = "pre_tool"
              ) -> list[dict[str, Any]]:
    """The audited decisions (at ``stage``), optionally for one tool."""
    kernel.audit.flush()
    return [e for e in read_events(kernel.audit.path) if e["kind"] == "decision"
            and e["stage"] == stage and (tool_name is None or e["tool"] == tool_name)]
