"""The MCP security gateway: one MCP server that fronts upstream MCP servers (stdio
subprocesses, streamable HTTP) and governs every ``tools/call`` through the kernel.

On ``tools/list`` it lists every upstream afresh and, for each tool:

1. names it ``<upstream>__<tool>``, so two upstreams can never shadow each other;
2. scans its definition for poisoning and its name for typosquatting (``_scan``);
3. checks it against its pin (``_pins``): a clean tool is pinned on first sight, a flagged
   one is held back, a changed one (rug pull) is held back until approved again;
4. shows only tools whose served definition is the trusted one. Each change of a tool's
   verdict is written to the audit log with the reasons.

On ``tools/call`` it refuses a tool that is unknown or not shown (audited, with the reason),
then decides the call with ``ToolGate`` exactly as ``bastion.adapters.mcp`` does: the
upstream receives ``pre.args``, its result passes through ``post_tool`` before the client
sees it, and a stop becomes ``MCPError(RUN_STOPPED)``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, NamedTuple

from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, ListToolsResult, TextContent, Tool

from bastion.adapters._core import ToolGate
from bastion.adapters.mcp import RUN_STOPPED, denied, govern_result
from bastion.gateway._config import SEPARATOR, GatewayConfig, Upstream
from bastion.gateway._pins import Pin, PinStore, definition_digest
from bastion.gateway._scan import scan_tool, typosquats
from bastion.kernel import Action, Decision, Kernel
from bastion.kernel._events import _Event

log = logging.getLogger("bastion.gateway")

_CODES = {"changed": "tool_changed", "flagged": "tool_flagged", "pending": "tool_unapproved"}


class Served(NamedTuple):
    """One upstream tool as the gateway serves it."""

    name: str  # upstream__tool
    upstream: str
    tool: str
    definition: Tool  # renamed to ``name``; otherwise as the upstream serves it
    digest: str = ""  # of what *this* gateway's upstream serves (pins are shared by processes)


class Gateway:
    """The gateway for one configuration. ``server`` is the MCP server to run (over stdio:
    ``serve_stdio``; in tests: ``mcp.Client(gateway.server)``); connecting to it connects
    to every upstream (the server's lifespan)."""

    def __init__(self, config: GatewayConfig, *, kernel: Kernel | None = None,
                 pins: PinStore | None = None):
        self.config = config
        self.kernel = kernel if kernel is not None else Kernel.from_policy(
            config.policy, audit=config.audit or False, state=config.state,
            catalog=config.catalog, durable=True)
        self.pins = pins if pins is not None else PinStore(config.state)
        self.facts = ({"id": config.agent},
                      {"id": config.session or f"mcp-gateway-{uuid.uuid4().hex[:12]}"})
        self.gate = ToolGate(self.kernel, agent=self.facts[0], session=self.facts[1])
        self.clients: dict[str, Any] = {}
        self.served: dict[str, Served] = {}
        self.server: Any = Server("bastion-mcp-gateway", lifespan=self._lifespan,
                                  on_list_tools=self._list_tools, on_call_tool=self._call_tool)

    def close(self) -> None:
        self.pins.close()
        self.kernel.close()

    # -- upstreams -------------------------------------------------------------------------
    @asynccontextmanager
    async def _lifespan(self, _server: Any) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            for up in self.config.upstreams:
                try:
                    self.clients[up.name] = await stack.enter_async_context(_client(up))
                except Exception as exc:  # one upstream down must not take the others
                    log.error("upstream %r: cannot connect: %s", up.name, exc)
            try:
                yield {}
            finally:
                self.clients.clear()

    async def refresh(self) -> list[Served]:
        """List every upstream, scan, pin, and return the tools that may be shown."""
        listed: list[Served] = []
        for upstream, client in self.clients.items():
            try:
                tools = await _list_all(client)
            except Exception as exc:
                log.error("upstream %r: tools/list failed: %s", upstream, exc)
                continue
            for tool in tools:
                name = f"{upstream}{SEPARATOR}{tool.name}"
                listed.append(Served(name, upstream, tool.name,
                                     tool.model_copy(update={"name": name})))
        findings = self._findings(listed)
        shown: list[Served] = []
        served: dict[str, Served] = {}
        now = time.time()
        for s in listed:
            wire = s.definition.model_dump(by_alias=True, mode="json", exclude_none=True)
            pin, moved = self.pins.observe(s.name, s.upstream, s.tool, wire, findings[s.name],
                                           auto_pin=self.config.auto_pin, now=now)
            served[s.name] = s._replace(digest=definition_digest(wire))
            if pin.visible:
                shown.append(s)
            elif moved:
                self._audit(s.name, {}, f"hidden from tools/list: {_why(pin)}",
                            _CODES.get(pin.status, "tool_flagged"))
        self.served = served
        return shown

    def _findings(self, listed: list[Served]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        for s in listed:
            counts[s.name] = counts.get(s.name, 0) + 1
        for s in listed:
            # other upstreams' tools by both names: the bare one and the one the model sees
            others = [n for o in listed if o.upstream != s.upstream for n in (o.tool, o.name)]
            d = s.definition
            found = [str(f) for f in scan_tool(d.name, d.description, d.input_schema,
                                               title=d.title, other_tools=others)]
            if counts[s.name] > 1:  # which of the entries would be called is the upstream's
                found.append(f"listed {counts[s.name]} times by {s.upstream!r}: no one "
                             "definition can be pinned")
            out.setdefault(s.name, []).extend(found)
        trusted = {s.name for s in listed if (p := self.pins.get(s.name)) is not None
                   and p.trusted and p.trusted == p.seen}
        for i, j, why in typosquats([(s.upstream, s.tool) for s in listed]):
            a, b = listed[i], listed[j]
            for me, other in ((a, b), (b, a)):
                if me.name not in trusted:
                    out[me.name].append(f"typosquat in name: looks like {other.name!r} ({why})")
        return out

    # -- handlers --------------------------------------------------------------------------
    async def _list_tools(self, _ctx: Any, _params: Any) -> Any:
        return ListToolsResult(tools=[s.definition for s in await self.refresh()])

    async def _call_tool(self, _ctx: Any, params: Any) -> Any:
        name, args = params.name, params.arguments
        if name not in self.served:
            await self.refresh()  # a client may call without listing first
        served = self.served.get(name)
        if served is None or served.upstream not in self.clients:
            return self._refuse(name, args, f"no tool {name!r} is served by this gateway",
                                "unknown_tool")
        pin = self.pins.get(name)  # read afresh: an approval elsewhere applies at once
        if pin is None or not pin.visible:
            code = _CODES.get(pin.status if pin else "pending", "tool_flagged")
            return self._refuse(name, args, _why(pin), code)
        if pin.trusted != served.digest:  # another process saw the trusted one; this one not
            return self._refuse(name, args, f"tool {name!r} as this gateway's upstream serves "
                                "it is not the trusted definition; list the tools again",
                                "tool_changed")
        context = {"mcp": {"upstream": served.upstream, "tool": served.tool}}
        pre = await self.gate.abefore(name, args, context=context)
        if not pre.run:
            if pre.stop:
                raise MCPError(RUN_STOPPED, pre.message)
            return denied(pre.message)
        try:
            result = await self.clients[served.upstream].call_tool(served.tool, pre.args)
        except Exception as exc:
            self.gate.failed(pre, exc)
            # the upstream's own words are as untrusted as a result: none reach the model
            log.warning("upstream %r: call to %r failed: %s", served.upstream, served.tool, exc)
            return CallToolResult(content=[TextContent(
                text=f"The upstream server {served.upstream!r} failed the call to "
                     f"{served.tool!r} ({type(exc).__name__}; its message is in the gateway's "
                     "log, not shown here).")], is_error=True)
        # the upstream's _meta (its serverInfo stamp among others) is not the gateway's to pass
        post, shown = await govern_result(self.gate, pre, result.model_copy(update={"meta": None}))
        if post.stop:
            raise MCPError(RUN_STOPPED, post.message)
        return shown

    def _refuse(self, name: str, args: Any, reason: str, code: str) -> Any:
        decision = self._audit(name, args if isinstance(args, dict) else {}, reason, code)
        return denied(f"The tool call {name!r} was denied by the MCP gateway: {reason}. "
                      f"Decision {decision.id}.")

    def _audit(self, name: str, args: dict[str, Any], reason: str, code: str) -> Decision:
        agent, session = self.facts
        decision = Decision(f"gw-{uuid.uuid4().hex}", "deny", "pre_tool", name,
                            reasons=(reason,), ts_ns=time.time_ns(), code=code,
                            agent=agent["id"], session=session["id"])
        audit = getattr(self.kernel, "audit", None)
        if audit is not None:
            audit.append(_Event(decision, Action(name, args, "pre_tool", agent, session)))
        return decision


def _why(pin: Pin | None) -> str:
    if pin is None:
        return "it has not been listed or approved"
    reasons = "; ".join(pin.reasons) or pin.status
    return (f"tool {pin.name!r} is {pin.status} ({reasons}); approve it with "
            f"'bastion mcp-gateway approve-tool {pin.name}'")


def _client(up: Upstream) -> Any:
    """An unopened ``mcp.Client`` for one upstream (no response cache: a listing must be
    fresh for a changed definition to be seen)."""
    if up.command is not None:
        return Client(StdioServerParameters(command=up.command, args=list(up.args),
                                            env=dict(up.env) if up.env else None, cwd=up.cwd),
                      cache=None)
    assert up.url is not None
    if not up.headers:
        return Client(up.url, cache=None)
    import httpx2  # the MCP SDK's HTTP client

    http = httpx2.AsyncClient(headers=dict(up.headers),
                              timeout=httpx2.Timeout(30.0, read=300.0))
    return Client(streamable_http_client(up.url, http_client=http), cache=None)


async def _list_all(client: Any) -> list[Tool]:
    tools: list[Tool] = []
    cursor = None
    for _ in range(1000):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


async def serve_stdio(config: GatewayConfig) -> None:
    """Run the gateway on this process's stdin and stdout until the client goes away."""
    gateway = Gateway(config)
    try:
        async with stdio_server() as (read, write):
            await gateway.server.run(read, write, gateway.server.create_initialization_options())
    finally:
        gateway.close()
