"""bastion on MCP: a server whose every tools/call the kernel decides, and a client-side
wrapper for a server you do not control. No network, no model: an in-process client stands
in for the agent and prints what it would have shown the model.

    pip install 'bastion[mcp]'
    python examples/mcp_example.py
"""

from __future__ import annotations

import anyio
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.types import TextContent

import bastion
from bastion.adapters.mcp import BastionMiddleware, GovernedSession

POLICY = """
version: 1
default: deny
rules:
  - {id: tools, tools: ["*"], effect: allow}
  - {id: no-delete, tools: ["delete_*"], effect: deny, message: deleting is not allowed}
  - {id: mask-body, tools: [send_email], effect: redact, redact: [args.body]}
  - {id: results, stage: post_tool, effect: allow}
  - id: no-secrets
    stage: post_tool
    when: "result.text.contains('SECRET')"
    effect: deny
    message: the result holds a secret
"""


def build_server(kernel: bastion.Kernel | None) -> MCPServer:
    middleware = [BastionMiddleware(kernel, agent={"id": "support-bot"})] if kernel else []
    server = MCPServer("crm", middleware=middleware)

    @server.tool()
    def lookup(user: str) -> str:
        return f"customer {user}"

    @server.tool()
    def delete_user(user: str) -> str:
        print(f"  !! delete_user ran for {user}")
        return "deleted"

    @server.tool()
    def send_email(to: str, body: str) -> str:
        print(f"  send_email received body={body!r}")
        return f"sent to {to}"

    @server.tool()
    def read_notes(user: str) -> str:
        return f"{user}: SECRET door code 4711"

    return server


CALLS = [("lookup", {"user": "ann"}), ("delete_user", {"user": "ann"}),
         ("send_email", {"to": "ann@example.com", "body": "your card is 4111 1111 1111 1111"}),
         ("read_notes", {"user": "ann"})]


async def show(session: object) -> None:
    for tool, args in CALLS:
        result = await session.call_tool(tool, args)  # type: ignore[attr-defined]
        text = " ".join(b.text for b in result.content if isinstance(b, TextContent))
        print(f"{tool}: {'DENIED ' if result.is_error else ''}{text}")


async def main() -> None:
    with bastion.Kernel.from_text(POLICY) as kernel:
        print("server side (BastionMiddleware in the server's middleware):")
        async with Client(build_server(kernel)) as client:
            await show(client)
        print("client side (GovernedSession around an ungoverned server's session):")
        async with Client(build_server(None)) as client:
            await show(GovernedSession(client, kernel, agent={"id": "desk-agent"}))


if __name__ == "__main__":
    anyio.run(main)
