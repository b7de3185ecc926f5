"""What the ``bastion`` command's modules share."""

from __future__ import annotations

from typing import Any, NoReturn

import typer

from bastion._errors import BastionError


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` on stderr and exit with ``code`` (2: an error in what was given)."""
    typer.echo(message, err=True)
    raise typer.Exit(code)


def parse_json(name: str, text: str) -> Any:
    """``text`` parsed as JSON, or exit 2 naming ``name`` and where it went wrong (nesting
    too deep for the parser is an error too, never a traceback)."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{name}:{exc.lineno}:{exc.colno}: error: invalid json: {exc.msg}")
    except RecursionError:
        fail(f"{name}:1:1: error: json nested too deeply")


def existing_store(target: str, what: str) -> None:
    """Exit 2 unless ``target`` names a store that exists: an operator command (a kill, an
    approval, a revocation) written to a mistyped path reaches no one. A URL of another backend
    (redis://, postgresql://) is left to the store to check; memory is refused."""
    import os

    from bastion._sqlite import sqlite_path

    if "://" in target and not target.startswith(("sqlite:", "memory:")):
        return
    try:
        path = sqlite_path(target, what)
    except BastionError as exc:
        fail(f"error: {exc}")
    if path == ":memory:":
        fail(f"error: {what} {target!r} is in memory: nothing else would ever read it")
    if not os.path.isfile(path):
        fail(f"error: no {what} at {path!r} (the kernel creates it; check the path)")
