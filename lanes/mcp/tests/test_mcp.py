"""bastion.adapters.mcp against the real SDK: a server governed by BastionMiddleware and a
client governed by GovernedSession, each over the SDK's in-process transports (the modern
direct dispatcher and the legacy in-memory JSON-RPC streams)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from conftest import ROOT, decisions, kernel
from mcp import Client
from mcp.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, ListToolsResult, TextContent, Tool

from bastion import Kernel
from bastion.adapters import RunStopped
from bastion.adapters.mcp import RUN_STOPPED, BastionMiddleware, GovernedSession

MODES = ["auto", "legacy"]


def tools_server(ran: list[tuple[str, dict]], **options: object) -> MCPServer:
    server = MCPServer("shop", **options)

    @server.tool()
    def lookup(user: str) -> str:
        ran.append(("lookup", {"user": user}))
        return f"customer {user}"

    @server.tool()
    def delete_user(user: str) -> str:
        ran.append(("delete_user", {"user": user}))
        return "deleted"

    @server.tool()
    def send_email(to: str, body: str) -> str:
        ran.append(("send_email", {"to": to, "body": body}))
        return f"sent to {to}"

    @server.tool()
    def read_vault(name: str) -> str:
        ran.append(("read_vault", {"name": name}))
        return "the code is TOP-SECRET-42"

    @server.tool()
    def card(user: str) -> str:
        ran.append(("card", {"user": user}))
        return f"{user} pays with 4111-1111-1111-1111"

    @server.tool()
    def refund(amount: int) -> str:
        ran.append(("refund", {"amount": amount}))
        return f"refunded {amount}"

    return server


def text(result: CallToolResult) -> str:
    return "\n".join(b.text for b in result.content if isinstance(b, TextContent))


def run(coro_fn, *args):
    return anyio.run(coro_fn, *args)


# -- server side -------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_server_allow_deny_redact_post(tmp_path: Path, mode: str) -> None:
    ran: list[tuple[str, dict]] = []
    k = kernel(tmp_path)
    server = tools_server(ran, middleware=[BastionMiddleware(k, agent={"id": "shop-bot"},
                                                             session={"id": "s1"})])

    async def main() -> dict[str, CallToolResult]:
        async with Client(server, mode=mode) as c:
            return {
                "lookup": await c.call_tool("lookup", {"user": "ann"}),
                "delete": await c.call_tool("delete_user", {"user": "ann"}),
                "email": await c.call_tool("send_email", {"to": "a@b.c", "body": "hi"}),
                "vault": await c.call_tool("read_vault", {"name": "x"}),
                "card": await c.call_tool("card", {"user": "bob"}),
            }

    out = run(main)
    # (1) allowed: ran, its result passed through
    assert not out["lookup"].is_error and text(out["lookup"]) == "customer ann"
    # (2) denied: never ran; the caller (the model) reads why
    assert out["delete"].is_error
    assert "deleting is not allowed" in text(out["delete"])
    assert ("delete_user", {"user": "ann"}) not in ran
    # (3) the redaction reached the tool
    assert ("send_email", {"to": "a@b.c", "body": "[REDACTED]"}) in ran
    # (4) a result denied after the call replaces the result; the secret never leaves
    assert ("read_vault", {"name": "x"}) in ran
    assert out["vault"].is_error and "the result holds a secret" in text(out["vault"])
    assert "TOP-SECRET" not in out["vault"].model_dump_json()
    # a result redaction replaces text and structured content alike
    assert "4111" not in out["card"].model_dump_json()
    assert "[REDACTED]" in text(out["card"]) and not out["card"].is_error
    events = decisions(k)
    assert {(e["tool"], e["effect"]) for e in events if e["stage"] == "pre_tool"} >= {
        ("lookup", "allow"), ("delete_user", "deny"), ("send_email", "allow")}
    assert any(e["tool"] == "read_vault" and e["stage"] == "post_tool" and e["effect"] == "deny"
               for e in events)
    assert all(e["agent"] == "shop-bot" and e["session"] == "s1" for e in events)
    k.close()


class BrokenKernel(Kernel):
    def evaluate(self, action):  # type: ignore[override]
        raise RuntimeError("fact provider down")

    async def aevaluate(self, action):  # type: ignore[override]
        raise RuntimeError("fact provider down")


@pytest.mark.parametrize("mode", MODES)
def test_server_exception_in_hook_denies(tmp_path: Path, mode: str) -> None:
    ran: list[tuple[str, dict]] = []
    k = BrokenKernel.from_text("version: 1\ndefault: deny\nrules: "
                               "[{id: a, tools: ['*'], effect: allow}]\n")
    server = tools_server(ran, middleware=[BastionMiddleware(k)])

    async def main() -> CallToolResult:
        async with Client(server, mode=mode) as c:
            return await c.call_tool("lookup", {"user": "ann"})

    result = run(main)
    assert result.is_error and "could not decide" in text(result)
    assert ran == []


def test_server_session_of_raising_denies(tmp_path: Path) -> None:
    ran: list[tuple[str, dict]] = []
    k = kernel(tmp_path)

    def session_of(ctx):
        raise KeyError("no session header")

    server = tools_server(ran, middleware=[BastionMiddleware(k, session_of=session_of)])

    async def main() -> CallToolResult:
        async with Client(server) as c:
            return await c.call_tool("lookup", {"user": "ann"})

    result = run(main)
    assert result.is_error and "no session header" in text(result) and ran == []
    k.close()


def test_server_session_of_reads_the_request(tmp_path: Path) -> None:
    ran: list[tuple[str, dict]] = []
    k = kernel(tmp_path)
    server = tools_server(ran, middleware=[BastionMiddleware(
        k, session_of=lambda ctx: {"id": f"conn-{ctx.protocol_version}"})])

    async def main() -> None:
        async with Client(server, mode="legacy") as c:
            await c.call_tool("lookup", {"user": "ann"})

    run(main)
    assert ran and decisions(k)[0]["session"].startswith("conn-20")
    k.close()


def test_server_kill_switch_stops_the_run(tmp_path: Path) -> None:
    ran: list[tuple[str, dict]] = []
    k = kernel(tmp_path)
    server = tools_server(ran, middleware=[BastionMiddleware(k)])

    async def main() -> None:
        async with Client(server) as c:
            assert not (await c.call_tool("lookup", {"user": "ann"})).is_error
            k.state.set_flag("kill:all", "test")
            with pytest.raises(MCPError) as caught:
                await c.call_tool("lookup", {"user": "bob"})
            assert caught.value.code == RUN_STOPPED
            assert "stopped" in caught.value.message

    run(main)
    assert ran == [("lookup", {"user": "ann"})]
    k.close()


def test_server_approval_then_retry_runs(tmp_path: Path) -> None:
    ran: list[tuple[str, dict]] = []
    k = kernel(tmp_path)
    server = tools_server(ran, middleware=[BastionMiddleware(k, session={"id": "s"})])

    async def main() -> tuple[CallToolResult, CallToolResult]:
        async with Client(server) as c:
            first = await c.call_tool("refund", {"amount": 500})
            pending = k.state.list_approvals("pending")
            assert len(pending) == 1 and pending[0].id in text(first)
            k.approve(pending[0].id, by="alice")
            return first, await c.call_tool("refund", {"amount": 500})

    first, second = run(main)
    assert first.is_error and "needs human approval" in text(first)
    assert not second.is_error and ran == [("refund", {"amount": 500})]
    k.close()


def test_lowlevel_server_handler_exception_is_recorded(tmp_path: Path) -> None:
    k = kernel(tmp_path)

    async def list_tools(ctx, params) -> ListToolsResult:
        return ListToolsResult(tools=[Tool(name="boom", input_schema={"type": "object"})])

    async def call_tool(ctx, params) -> CallToolResult:
        raise RuntimeError("disk on fire")

    server = Server("low", on_list_tools=list_tools, on_call_tool=call_tool)
    server.middleware.append(BastionMiddleware(k))

    async def main() -> None:
        async with Client(server, mode="legacy") as c:
            with pytest.raises(MCPError):
                await c.call_tool("boom", {})

    run(main)
    k.audit.flush()
    from bastion.audit import read_events

    outcomes = [e for e in read_events(k.audit.path) if e.get("kind") == "outcome"]
    assert outcomes and outcomes[-1]["status"] == "exception"
    assert "disk on fire" in outcomes[-1]["error"]
    k.close()


def test_other_requests_pass_through(tmp_path: Path) -> None:
    k = kernel(tmp_path)
    server = tools_server([], middleware=[BastionMiddleware(k)])

    async def main() -> list[str]:
        async with Client(server) as c:
            return [t.name for t in (await c.list_tools()).tools]

    assert "lookup" in run(main)
    assert decisions(k) == []  # listing is not a tool call
    k.close()


# -- client side -------------------------------------------------------------------------
def test_client_governed_session(tmp_path: Path) -> None:
    ran: list[tuple[str, dict]] = []
    k = kernel(tmp_path)
    server = tools_server(ran)  # the server itself is ungoverned

    async def main() -> dict[str, CallToolResult]:
        async with Client(server, mode="legacy") as client:
            governed = GovernedSession(client.session, k, agent={"id": "desk"})
            names = [t.name for t in (await governed.list_tools()).tools]  # delegated
            assert "lookup" in names
            return {
                "lookup": await governed.call_tool("lookup", {"user": "ann"}),
                "delete": await governed.call_tool("delete_user", {"user": "ann"}),
                "email": await governed.call_tool("send_email", {"to": "x", "body": "b"}),
                "vault": await governed.call_tool("read_vault", {"name": "x"}),
                "card": await governed.call_tool("card", {"user": "bob"}),
            }

    out = run(main)
    assert isinstance(out["lookup"], CallToolResult) and text(out["lookup"]) == "customer ann"
    assert out["delete"].is_error and "deleting is not allowed" in text(out["delete"])
    assert all(name != "delete_user" for name, _ in ran)
    assert ("send_email", {"to": "x", "body": "[REDACTED]"}) in ran
    assert out["vault"].is_error and "TOP-SECRET" not in out["vault"].model_dump_json()
    assert "4111" not in out["card"].model_dump_json()
    assert out["card"].structured_content == {"result": "bob pays with [REDACTED]"}
    k.close()


def test_client_wraps_mcp_client_too(tmp_path: Path) -> None:
    ran: list[tuple[str, dict]] = []
    k = kernel(tmp_path)

    async def main() -> CallToolResult:
        async with Client(tools_server(ran)) as client:
            return await GovernedSession(client, k).call_tool("lookup", {"user": "z"})

    assert text(run(main)) == "customer z" and ran == [("lookup", {"user": "z"})]
    k.close()


def test_client_exception_in_hook_denies(tmp_path: Path) -> None:
    ran: list[tuple[str, dict]] = []
    k = kernel(tmp_path)

    def agent():
        raise RuntimeError("identity service down")

    async def main() -> CallToolResult:
        async with Client(tools_server(ran)) as client:
            return await GovernedSession(client, k, agent=agent).call_tool(
                "lookup", {"user": "z"})

    result = run(main)
    assert result.is_error and "identity service down" in text(result) and ran == []
    k.close()


def test_client_kill_switch_raises_run_stopped(tmp_path: Path) -> None:
    ran: list[tuple[str, dict]] = []
    k = kernel(tmp_path)
    k.state.set_flag("kill:all", "test")

    async def main() -> None:
        async with Client(tools_server(ran)) as client:
            with pytest.raises(RunStopped):
                await GovernedSession(client, k).call_tool("lookup", {"user": "z"})

    run(main)
    assert ran == []
    k.close()


def test_client_upstream_error_is_recorded_and_raised(tmp_path: Path) -> None:
    k = kernel(tmp_path)

    async def list_tools(ctx, params) -> ListToolsResult:
        return ListToolsResult(tools=[Tool(name="boom", input_schema={"type": "object"})])

    async def call_tool(ctx, params) -> CallToolResult:
        raise RuntimeError("disk on fire")

    server = Server("low", on_list_tools=list_tools, on_call_tool=call_tool)

    async def main() -> None:
        async with Client(server, mode="legacy") as client:
            with pytest.raises(MCPError):
                await GovernedSession(client.session, k).call_tool("boom", {})

    run(main)
    k.audit.flush()
    from bastion.audit import read_events

    assert [e["status"] for e in read_events(k.audit.path) if e.get("kind") == "outcome"] \
        == ["exception"]
    k.close()


def test_example_runs() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "mcp_example.py")],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "lookup: customer ann" in out
    assert "delete_user: DENIED" in out
    assert "send_email received body='[REDACTED]'" in out
