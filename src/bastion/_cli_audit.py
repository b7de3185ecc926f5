"""``bastion audit``: read, verify and prove an audit log (a path or ``sqlite:///PATH``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from bastion._cli_common import fail as _fail
from bastion._errors import BastionError, without_password

audit_app = typer.Typer(no_args_is_help=True, help="Read, verify and prove the audit log.")


@audit_app.command("verify")
def audit_verify(log: Annotated[str, typer.Argument(metavar="PATH")],
                 key: Annotated[Path | None, typer.Option("--key")] = None) -> None:
    """Verify the chain, MACs and signed checkpoints: exit 0 intact, 1 tampered, 2 error."""
    from bastion.audit import verify

    path = _audit_path(log)
    if not path.exists():
        _fail(f"{path}: error: no such audit log")
    try:
        report = verify(path, key_path=key)
    except BastionError as exc:
        _fail(f"{path}: error: {exc}")
    if report.ok:
        typer.echo(f"{path}: intact ({report.entries} entries, {report.checkpoints} checkpoints)")
        return
    typer.echo(f"{path}: TAMPERED: {report.reason}", err=True)
    raise typer.Exit(1)


@audit_app.command("tail")
def audit_tail(log: Annotated[str, typer.Argument(metavar="PATH")],
               n: Annotated[int, typer.Option("-n")] = 10) -> None:
    """Print the last N events as JSON lines."""
    from bastion.audit import read_events

    events = list(_read(_audit_path(log), read_events))
    for event in events[-n:] if n > 0 else []:
        typer.echo(json.dumps(event, ensure_ascii=False))


@audit_app.command("export")
def audit_export(log: Annotated[str, typer.Argument(metavar="PATH")],
                 fmt: Annotated[str, typer.Option("--format")] = "jsonl",
                 out: Annotated[Path | None, typer.Option("--output", "-o")] = None) -> None:
    """Export every event (format: jsonl) to stdout or --output."""
    from bastion.audit import read_events

    path = _audit_path(log)
    if fmt != "jsonl":
        _fail(f"error: unknown format {fmt!r} (jsonl)")
    if not path.exists():
        _fail(f"{path}: error: no such audit log")
    try:
        sink = out.open("w", encoding="utf-8") if out else sys.stdout
    except OSError as exc:
        _fail(f"{out}: error: cannot write: {exc.strerror}")
    try:
        for event in _read(path, read_events):
            sink.write(json.dumps(event, ensure_ascii=False) + "\n")
    finally:
        if out:
            sink.close()


@audit_app.command("prove")
def audit_prove(
    log: Annotated[str, typer.Argument(metavar="PATH")],
    seq: Annotated[int | None, typer.Option("--seq", help="Inclusion proof of this entry.")] = None,
    old: Annotated[int | None, typer.Option("--old", help="Consistency: old tree size.")] = None,
    new: Annotated[int | None, typer.Option("--new", help="Consistency: new tree size.")] = None,
) -> None:
    """Print an RFC 6962 inclusion proof (--seq) or consistency proof (--old, --new) as JSON."""
    from bastion.audit import latest_checkpoint, prove_consistency, prove_inclusion

    path = _audit_path(log)
    try:
        if seq is not None:
            proof = prove_inclusion(path, seq)
        elif old is not None:
            size = new if new is not None else (latest_checkpoint(path) or {}).get("tree_size")
            if size is None:
                _fail(f"{path}: error: no checkpoint yet; pass --new")
            proof = prove_consistency(path, old, int(size))
        else:
            _fail("error: give --seq N, or --old M [--new N]")
    except BastionError as exc:
        _fail(f"{path}: error: {exc}")
    typer.echo(json.dumps(proof, indent=2))


def _audit_path(log: str) -> Path:
    """The file an audit log argument names: a path or ``sqlite:///PATH`` (as ``audit=``)."""
    from bastion.audit._store import resolve_target

    try:
        path = resolve_target(log)
    except BastionError as exc:
        _fail(f"{without_password(log)}: error: {exc}")
    if path is None:
        _fail(f"{without_password(log)}: error: an in-memory audit log cannot be read from the "
              "command line")
    return path


def _read(path: Path, reader: Any) -> Any:
    if not path.exists():
        _fail(f"{path}: error: no such audit log")
    try:
        yield from reader(path)
    except BastionError as exc:
        _fail(f"{path}: error: {exc}")
