"""The MCP security gateway (``bastion mcp-gateway``): an MCP server that fronts upstream MCP
servers and governs every tool call through the kernel, and refuses poisoned, look-alike and
changed tools (see ``docs/adapters/mcp.md``).

The scan, the pins and the configuration are pure and need no MCP SDK; ``Gateway`` (the
server) needs ``pip install 'bastion[mcp]'``. Names are imported on first use, so the
``bastion`` command stays quick to start.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bastion.gateway._config import GatewayConfig, Upstream, load_config, parse_config
    from bastion.gateway._pins import Pin, PinStore, definition_digest
    from bastion.gateway._scan import Finding, invisible, scan_tool, skeleton, typosquats
    from bastion.gateway._server import Gateway, serve_stdio

_HOME = {"GatewayConfig": "_config", "Upstream": "_config", "load_config": "_config",
         "parse_config": "_config", "Pin": "_pins", "PinStore": "_pins",
         "definition_digest": "_pins", "Finding": "_scan", "invisible": "_scan",
         "scan_tool": "_scan", "skeleton": "_scan", "typosquats": "_scan",
         "Gateway": "_server", "serve_stdio": "_server"}

__all__ = ["Finding", "Gateway", "GatewayConfig", "Pin", "PinStore", "Upstream",
           "definition_digest", "invisible", "load_config", "parse_config", "scan_tool",
           "serve_stdio", "skeleton", "typosquats"]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'bastion.gateway' has no attribute {name!r}")
    return getattr(import_module(f"bastion.gateway.{home}"), name)
