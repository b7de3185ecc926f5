"""MCP (the official ``mcp`` Python SDK, 2.x): every ``tools/call`` decided by the kernel.

Two sides, both on ``ToolGate``:

* **server** — ``BastionMiddleware`` goes in ``Server.middleware`` (``MCPServer.middleware``
  for the high-level server), the SDK's context-tier middleware that wraps every inbound
  request. For ``tools/call`` it decides the call before the handler runs, hands the handler
  ``pre.args`` (redactions included), and decides the result after it.
* **client** — ``GovernedSession`` wraps a ``ClientSession`` (or an ``mcp.Client``) by
  composition: its ``call_tool`` is governed, everything else is the wrapped object's.

What each decision becomes:

1. allow → the call runs with ``pre.args``; the result passes through ``post_tool``.
2. deny (or an approval still pending, whose id the message names) → a
   ``CallToolResult(content=[TextContent(text=message)], isError=True)``: the model reads why.
3. stop (kill switch, budget) → the server raises ``MCPError(RUN_STOPPED, message)``, a
   JSON-RPC error that ends the client's call; the client wrapper raises ``RunStopped``.
4. a result denied after the call → the denial message replaces it (``isError``); a
   redacted, marked or quarantined result replaces the original (see ``shown_result``).

The kernel sees a call's result as ``{"text": ..., "structured": ..., "is_error": ...}``:
the text of every text block (and embedded text resource) joined by new lines, the
``structuredContent`` and the ``isError`` flag, so one rule can test ``result.text`` and a
redaction can name ``result.structured.<field>``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

try:
    from mcp.shared.exceptions import MCPError
    from mcp.types import CallToolResult, TextContent
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("bastion.adapters.mcp needs the MCP SDK: pip install 'bastion[mcp]'") \
        from exc

from bastion.adapters._core import Post, Pre, RunStopped, Source, ToolGate
from bastion.kernel import Kernel

#: JSON-RPC error code of a call refused because the run must stop (implementation-defined
#: server error range, -32000 to -32099)
RUN_STOPPED = -32050

SessionOf = Callable[[Any], Mapping[str, Any]]


def denied(message: str) -> Any:
    """The result a model sees instead of a call (or a result) that was not allowed."""
    return CallToolResult(content=[TextContent(text=message)], is_error=True)


def result_view(wire: Mapping[str, Any]) -> dict[str, Any]:
    """What the kernel sees of a ``CallToolResult`` in wire form (see the module docstring)."""
    texts = [t for t in map(_block_text, wire.get("content") or ()) if t is not None]
    return {"text": "\n".join(texts), "structured": wire.get("structuredContent"),
            "is_error": bool(wire.get("isError", False))}


def shown_result(wire: Mapping[str, Any], view: Mapping[str, Any], shown: Any) -> dict[str, Any]:
    """The wire result carrying ``shown`` (what the kernel let the model see) in place of
    ``view``: the original when nothing changed; otherwise the text blocks become one block
    of the new text (images and other blocks stay), ``structuredContent`` the new structured
    value. When the kernel gave back something else (a quarantine handle), that becomes the
    text; a ``structuredContent`` that can no longer be shown is withheld and the result
    marked ``isError``, so a client that validates output schemas does not reject it."""
    out = dict(wire)
    if shown == view:
        return out
    if isinstance(shown, Mapping) and set(shown) <= {"text", "structured", "is_error"}:
        text, structured = shown.get("text", ""), shown.get("structured")
    else:
        text = shown if isinstance(shown, str) else json.dumps(shown, default=str)
        structured = None
    if not isinstance(text, str):
        text = json.dumps(text, default=str)
    kept = [b for b in wire.get("content") or () if _block_text(b) is None]
    out["content"] = [{"type": "text", "text": text}, *kept]
    out.pop("structuredContent", None)
    if structured is not None:
        out["structuredContent"] = structured
    elif wire.get("structuredContent") is not None:
        out["isError"] = True
    return out


async def govern_result(gate: ToolGate, pre: Pre, result: Any) -> tuple[Post, Any]:
    """Decide a ``tools/call`` result (a ``CallToolResult`` or its wire dict): the gate's
    ``Post`` and what to return — the wire result the model may see, or the denial."""
    wire = _wire(result)
    view = result_view(wire)
    post = await gate.aafter(pre, view)
    if not post.allowed:
        return post, denied(post.message)
    return post, shown_result(wire, view, post.result)


class BastionMiddleware:
    """``ServerMiddleware`` that governs every ``tools/call`` of an MCP server.

    ``agent``, ``session`` and ``context`` are the facts of every call (mappings or
    zero-argument callables); ``session_of(ctx)`` derives the session from the request's
    ``ServerRequestContext`` (a transport session id, a header) and wins over ``session``.
    Other requests (``tools/list``, resources, prompts) pass through untouched.
    """

    def __init__(self, kernel: Kernel, *, agent: Source = None, session: Source = None,
                 context: Source = None, session_of: SessionOf | None = None):
        self.gate = ToolGate(kernel, agent=agent, session=session, context=context)
        self._session_of = session_of

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Any]) -> Any:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        params = dict(ctx.params or {})
        session: Source = None
        if self._session_of is not None:
            session_of = self._session_of
            session = lambda: session_of(ctx)  # noqa: E731 - read inside the gate: errors deny
        name = params.get("name")
        pre = await self.gate.abefore(name if isinstance(name, str) else "",
                                      params.get("arguments"), session=session)
        if not pre.run:
            if pre.stop:
                raise MCPError(RUN_STOPPED, pre.message)
            return denied(pre.message)
        try:
            result = await call_next(dataclasses.replace(ctx, params={**params,
                                                                      "arguments": pre.args}))
        except Exception as exc:
            self.gate.failed(pre, exc)
            raise
        post, shown = await govern_result(self.gate, pre, result)
        if post.stop:
            raise MCPError(RUN_STOPPED, post.message)
        return shown


class GovernedSession:
    """A ``ClientSession`` (or ``mcp.Client``) whose ``call_tool`` the kernel decides.

    Composition, not a subclass: every other attribute is the wrapped object's. A denied
    call returns an ``isError`` result holding the reason (the tool never runs); a stop
    raises ``RunStopped``.
    """

    def __init__(self, client: Any, kernel: Kernel, *, agent: Source = None,
                 session: Source = None, context: Source = None):
        self.client = client
        self.gate = ToolGate(kernel, agent=agent, session=session, context=context)

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | None = None,
                        *args: Any, **kwargs: Any) -> Any:
        pre = await self.gate.abefore(name, arguments)
        if not pre.run:
            if pre.stop:
                raise RunStopped(pre.decision)
            return denied(pre.message)
        try:
            result = await self.client.call_tool(name, pre.args, *args, **kwargs)
        except Exception as exc:
            self.gate.failed(pre, exc)
            raise
        if not isinstance(result, CallToolResult):  # an input request, not a tool's output yet
            return result
        post, shown = await govern_result(self.gate, pre, result)
        if post.stop and post.decision is not None:
            raise RunStopped(post.decision)
        return CallToolResult.model_validate(shown) if post.allowed else shown

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def _wire(result: Any) -> dict[str, Any]:
    if isinstance(result, Mapping):
        return dict(result)
    dumped: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dumped


def _block_text(block: Any) -> str | None:
    """The text a content block carries (a text block, an embedded text resource, a resource
    link's name, title, description and URI), or None."""
    if not isinstance(block, Mapping):
        return None
    if block.get("type") == "text":
        return str(block.get("text", ""))
    resource = block.get("resource")
    if block.get("type") == "resource" and isinstance(resource, Mapping) and "text" in resource:
        uri = resource.get("uri")
        return str(resource["text"]) if uri is None else f"{uri}\n{resource['text']}"
    if block.get("type") == "resource_link":  # what a model reads of a link is text too
        return "\n".join(str(block[k]) for k in ("name", "title", "description", "uri")
                         if block.get(k) is not None)
    return None
