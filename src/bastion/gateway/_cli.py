"""``bastion mcp-gateway``: run the gateway, list its tool pins, approve a tool."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bastion._cli_common import fail
from bastion._errors import BastionError, PolicyError

gateway_app = typer.Typer(no_args_is_help=True, help=(
    "An MCP server that fronts upstream MCP servers, governs every tool call and refuses "
    "poisoned, look-alike and changed tools."))

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Gateway file (YAML).")]
StateOpt = Annotated[str | None, typer.Option("--state", help="State store (else the config's).")]


def _config(path: Path) -> Any:
    from bastion.gateway._config import load_config

    try:
        return load_config(path)
    except PolicyError as exc:
        fail(exc.render())


def _pins(config: Path | None, state: str | None) -> tuple[Any, Any]:
    """The pin store (and the config, when given) named by ``--config`` or ``--state``."""
    from bastion.gateway._pins import PinStore

    cfg = _config(config) if config is not None else None
    target = state or (cfg.state if cfg is not None else None)
    if target is None:
        fail("error: give --config PATH (with a 'state' file) or --state PATH")
    try:
        return PinStore(target), cfg
    except BastionError as exc:
        fail(f"error: {exc}")


@gateway_app.command("run")
def run(config: Annotated[Path, typer.Option("--config", "-c", help="Gateway file (YAML).")],
        policy: Annotated[Path | None, typer.Option("--policy", "-p",
                                                    help="Policy file (else the config's).")]
        = None,
        state: StateOpt = None,
        audit: Annotated[str | None, typer.Option("--audit", help="Audit log (else the "
                                                                  "config's).")] = None,
        catalog: Annotated[str | None, typer.Option("--catalog", help="Tool catalog (else "
                                                                      "the config's).")] = None,
        ) -> None:
    """Serve the gateway over stdio (what an MCP client launches)."""
    import dataclasses
    import logging

    cfg = _config(config)
    given = {"policy": str(policy) if policy else None, "state": state, "audit": audit,
             "catalog": catalog}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
    try:
        import anyio

        from bastion.gateway._server import serve_stdio
    except ImportError as exc:
        fail(f"error: the MCP gateway needs the MCP SDK: pip install 'bastion[mcp]' ({exc})")
    logging.basicConfig(level=logging.WARNING, format="bastion mcp-gateway: %(message)s")
    try:
        anyio.run(serve_stdio, cfg)
    except PolicyError as exc:
        fail(exc.render())
    except BastionError as exc:
        fail(f"error: {exc}")


@gateway_app.command("tools")
def tools(config: ConfigOpt = None, state: StateOpt = None,
          full: Annotated[bool, typer.Option("--full", help="Print each definition.")] = False
          ) -> None:
    """List every tool the gateway has seen, its status and why, as JSON lines."""
    store, _ = _pins(config, state)
    try:
        for p in store.all():
            row: dict[str, Any] = {"name": p.name, "status": p.status, "visible": p.visible,
                                   "trust": p.trust, "reasons": list(p.reasons),
                                   "trusted": p.trusted, "seen": p.seen}
            if full:
                row["definition"] = p.definition
            typer.echo(json.dumps(row, ensure_ascii=False))
    finally:
        store.close()


@gateway_app.command("approve-tool")
def approve_tool(name: Annotated[str, typer.Argument(help="The served name: upstream__tool.")],
                 by: Annotated[str, typer.Option("--by", help="Who approves.")],
                 config: ConfigOpt = None, state: StateOpt = None,
                 digest: Annotated[str | None, typer.Option(
                     "--digest", help="The definition reviewed (`tools --full`'s seen): "
                                      "refused if the tool changed since.")] = None) -> None:
    """Trust the definition of NAME the gateway last saw (review it with `tools --full`, and
    pass its `seen` as --digest so that a definition swapped since is not approved)."""
    store, cfg = _pins(config, state)
    try:
        pin = store.approve(name, by, time.time(), digest)
    except BastionError as exc:
        fail(f"error: {exc}", 1)
    finally:
        store.close()
    if cfg is not None and cfg.audit:
        _audit_approval(cfg.audit, pin, by)
    typer.echo(f"{pin.name}: approved by {by} ({pin.trusted[:19]})")


def _audit_approval(path: str, pin: Any, by: str) -> None:
    from bastion.audit import AuditLog

    log = AuditLog.open(path, durable=True)
    try:
        ts = time.time_ns()
        log.append({"kind": "mcp.tool_approved", "id": f"mcp.tool_approved:{pin.name}:{ts}",
                    "ts": ts, "tool": pin.name, "by": by, "digest": pin.trusted})
    finally:
        log.close()
