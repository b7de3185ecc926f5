"""A small MCP server over stdio for the lane's tests: each call is appended to $CALLS_LOG."""

from __future__ import annotations

import json
import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("files")


def _record(tool: str, args: dict[str, str]) -> None:
    with open(os.environ["CALLS_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps([tool, args]) + "\n")


@server.tool()
def read_file(path: str) -> str:
    """Read a file."""
    _record("read_file", {"path": path})
    return "-----BEGIN PRIVATE KEY-----" if path.endswith(".pem") else f"text of {path}"


@server.tool()
def send_email(to: str, body: str) -> str:
    """Send an e-mail."""
    _record("send_email", {"to": to, "body": body})
    return f"sent to {to}"


@server.tool()
def drop_table(name: str) -> str:
    """Drop a table."""
    _record("drop_table", {"name": name})
    return "dropped"


if __name__ == "__main__":
    server.run("stdio")
