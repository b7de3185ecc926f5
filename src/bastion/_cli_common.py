"""What the ``bastion`` command's modules share."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` on stderr and exit with ``code`` (2: an error in what was given)."""
    typer.echo(message, err=True)
    raise typer.Exit(code)
