"""The ``bastion`` command. Exit codes follow DESIGN.md: 0 success/allowed/intact, 1 not
allowed/tampered/failing, 2 an error in what was given (with ``PATH:LINE:COL`` where it has one)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from bastion._cli_audit import audit_app
from bastion._cli_common import existing_store, parse_json
from bastion._cli_common import fail as _fail
from bastion._errors import BastionError, PolicyError
from bastion.gateway._cli import gateway_app
from bastion.mesh._cli import id_app, token_app, trust_app

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Runtime governance for autonomous AI agents.")
app.add_typer(audit_app, name="audit")
app.add_typer(id_app, name="id")
app.add_typer(token_app, name="token")
app.add_typer(trust_app, name="trust")
app.add_typer(gateway_app, name="mcp-gateway")

_STAGES = ("input", "pre_tool", "post_tool", "output")
PolicyOpt = Annotated[Path, typer.Option("--policy", "-p", help="Policy file (YAML).")]
StateOpt = Annotated[str | None, typer.Option("--state", help="State store path or URL.")]


def _json_arg(name: str, text: str | None) -> Any:
    if text is None:
        return {}
    value = parse_json(name, text)
    if not isinstance(value, dict):
        _fail(f"{name}:1:1: error: expected a json object")
    return value


@app.command()
def check(policies: Annotated[list[Path], typer.Argument(help="Policy files.")]) -> None:
    """Validate policy files: exit 0 when all are valid, 2 otherwise."""
    from bastion.policy._cedar import CedarPolicy, load_any

    bad = 0
    for path in policies:
        try:
            loaded = load_any(path)
        except PolicyError as exc:
            typer.echo(exc.render(), err=True)
            bad += 1
            continue
        if isinstance(loaded, CedarPolicy):
            typer.echo(f"{path}: ok ({loaded.size} cedar policies, {loaded.digest[:19]})")
            continue
        for warning in loaded.warnings:
            typer.echo(warning, err=True)
        typer.echo(f"{path}: ok ({len(loaded.rules)} rules, {loaded.digest[:19]})")
    if bad:
        raise typer.Exit(2)


@app.command("eval")
def eval_(
    policy: PolicyOpt,
    tool: Annotated[str | None, typer.Option("--tool", "-t")] = None,
    stage: Annotated[str, typer.Option("--stage")] = "pre_tool",
    args: Annotated[str | None, typer.Option("--args", help="JSON object.")] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="JSON object.")] = None,
    session: Annotated[str | None, typer.Option("--session", help="JSON object.")] = None,
    context: Annotated[str | None, typer.Option("--context", help="JSON object.")] = None,
    result: Annotated[str | None, typer.Option("--result", help="JSON (post_tool).")] = None,
    state: StateOpt = None,
    audit: Annotated[str | None, typer.Option("--audit", help="Audit log to append to.")] = None,
    approval: Annotated[str | None, typer.Option("--approval", help="Granted approval id.")] = None,
) -> None:
    """Decide one action and print the decision as JSON: exit 0 allowed, 1 not, 2 error."""
    from bastion.kernel import Action, Kernel

    if stage not in _STAGES:  # a typo is an error in what was given, not a denial
        _fail(f"--stage: error: unknown stage {stage!r} (one of {', '.join(_STAGES)})")
    parsed = {n: _json_arg(f"--{n}", v) for n, v in
              (("args", args), ("agent", agent), ("session", session), ("context", context))}
    res = None if result is None else parse_json("--result", result)
    try:
        kernel = Kernel.from_policy(policy, audit=audit if audit else False, state=state,
                                    durable=True)
    except PolicyError as exc:
        _fail(exc.render())
    except BastionError as exc:
        _fail(f"error: {exc}")
    with kernel:
        decision = kernel.evaluate(Action(tool=tool, stage=stage, result=res,
                                          approval=approval, **parsed))
    typer.echo(_json_out(decision.to_dict()))
    # denied because something failed (a store down, a guard that raised): an error, exit 2
    raise typer.Exit(0 if decision.allowed else 2 if decision.code == "internal_error" else 1)


def _json_out(value: Any) -> str:
    """JSON text that parses anywhere: what JSON cannot carry (a lone surrogate, NaN) in the
    tagged form the audit log uses (``{"$str": …}``, ``{"$float": …}``)."""
    from bastion._canon import repaired

    return json.dumps(repaired(value), ensure_ascii=False, default=str, allow_nan=False)


@app.command()
def test(files: Annotated[list[Path], typer.Argument(help="Policy test files (YAML).")],
         verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run policy test files: exit 0 when every case passes, 1 on a failure, 2 on an error."""
    from bastion._policytest import run_file

    passed = failed = 0
    for path in files:
        try:
            results = run_file(path)
        except PolicyError as exc:
            _fail(exc.render())
        for r in results:
            if r.passed:
                passed += 1
                if verbose:
                    typer.echo(f"PASS {r.file}:{r.line} {r.name}")
            else:
                failed += 1
                typer.echo(f"FAIL {r.file}:{r.line} {r.name}: " + "; ".join(r.problems))
    typer.echo(f"{passed} passed, {failed} failed")
    raise typer.Exit(1 if failed else 0)


@app.command()
def approve(
    approval_id: Annotated[str, typer.Argument(help="The approval id from the decision.")],
    state: Annotated[str, typer.Option("--state", help="State store the kernel uses.")],
    by: Annotated[str, typer.Option("--by", help="Who approves.")],
    refuse: Annotated[bool, typer.Option("--refuse", help="Refuse instead of granting.")] = False,
    note: Annotated[str, typer.Option("--note")] = "",
    audit: Annotated[str | None, typer.Option("--audit", help="Audit log to record it in.")] = None,
) -> None:
    """Grant (or --refuse) a pending approval. It is single-use and bound to one action."""
    from bastion._errors import ApprovalError
    from bastion.kernel._approvals import Approvals

    if not by.strip():
        _fail("error: an approval needs the approver's identity (--by)")
    store = _open_state(state)
    log = None
    try:
        if audit:
            from bastion.audit import AuditLog

            log = AuditLog.open(audit, durable=True)
        # the kernel's own approval path: the identity check, and the audit event
        decided = Approvals(store, None, 0.0, log, time.time_ns).decide(
            approval_id, not refuse, by, note)
    except ApprovalError as exc:
        _fail(f"error: {exc}", 1)
    except BastionError as exc:
        _fail(f"error: {exc}")
    finally:
        store.close()
        if log is not None:
            log.close()
    typer.echo(f"{decided.id}: {decided.status} by {decided.decided_by} ({decided.tool})")


@app.command()
def approvals(state: Annotated[str, typer.Option("--state")],
              all_: Annotated[bool, typer.Option("--all")] = False) -> None:
    """List pending approvals (``--all``: every status; an expired one shows as ``expired``)."""
    store = _open_state(state)
    try:
        try:
            listed = store.list_approvals(None if all_ else "pending")
        except BastionError as exc:
            _fail(f"error: {exc}")
        now = time.time()
        for a in listed:
            status = "expired" if a.status == "pending" and a.expires <= now else a.status
            if status == "expired" and not all_:
                continue
            typer.echo(json.dumps({"id": a.id, "status": status, "tool": a.tool,
                                   "agent": a.agent, "session": a.session,
                                   "expires": a.expires, "digest": a.digest}))
    finally:
        store.close()


def _open_state(state: str) -> Any:
    """The state store named by ``--state`` (one that exists); exit 2 with the reason when it
    cannot be."""
    from bastion.state import open_store

    existing_store(state, "state store")
    try:
        return open_store(state)
    except BastionError as exc:
        _fail(f"error: {exc}")


ScopeAgent = Annotated[str | None, typer.Option("--agent", help="One agent id.")]
ScopeSession = Annotated[str | None, typer.Option("--session", help="One session id.")]
ScopeTool = Annotated[str | None, typer.Option("--tool", help="One tool name.")]
ScopeAll = Annotated[bool, typer.Option("--all", help="The whole fleet.")]


@contextlib.contextmanager
def _kill_switch(state: str, audit: str | None,
                 release_keys: dict[str, str] | None = None) -> Iterator[Any]:
    """A kill switch over the state store (and audit log); errors exit 2; both are closed."""
    from bastion.runtime._kill import KillSwitch
    from bastion.state import open_store

    existing_store(state, "state store")
    store, log = None, None
    try:
        store = open_store(state)
        if audit:
            from bastion.audit import AuditLog

            log = AuditLog.open(audit, durable=True)
        yield KillSwitch(store, audit=log, release_keys=release_keys)
    except BastionError as exc:
        _fail(f"error: {exc}")
    finally:
        if log is not None:
            log.close()
        if store is not None:
            store.close()


@app.command()
def kill(state: Annotated[str, typer.Option("--state", help="The fleet's state store.")],
         by: Annotated[str, typer.Option("--by", help="Who engages it.")],
         agent: ScopeAgent = None, session: ScopeSession = None, tool: ScopeTool = None,
         all_: ScopeAll = False, reason: Annotated[str, typer.Option("--reason")] = "",
         audit: Annotated[str | None, typer.Option("--audit", help="Audit log to record in.")]
         = None) -> None:
    """Engage the kill switch: every matching decision is denied until released."""
    with _kill_switch(state, audit) as switch:
        key, cancelled = switch.engage(by=by, reason=reason, agent=agent, session=session,
                                       tool=tool, everything=all_)
    typer.echo(f"engaged {key} (by {by}); {cancelled} running call(s) cancelled here")


@app.command()
def release(state: Annotated[str, typer.Option("--state")],
            by: Annotated[str, typer.Option("--by", help="Who releases it.")],
            agent: ScopeAgent = None, session: ScopeSession = None, tool: ScopeTool = None,
            all_: ScopeAll = False, reason: Annotated[str, typer.Option("--reason")] = "",
            audit: Annotated[str, typer.Option("--audit", help="Audit log to record in.")] = "",
            release_keys: Annotated[Path | None, typer.Option(
                "--release-keys", help="YAML/JSON map of who may release to their did:key; "
                "then --key must sign the release.")] = None,
            key: Annotated[Path | None, typer.Option(
                "--key", help="The releaser's private key file (bastion id new).")] = None,
            ) -> None:
    """Release one kill-switch scope (audited; exit 1 if it was not engaged)."""
    if not audit:
        _fail("error: releasing the kill switch must be audited: give --audit PATH")
    keys, proof = None, None
    if release_keys is not None or key is not None:
        keys, proof = _release_authority(release_keys, key, by, reason, agent, session, tool,
                                         all_)
    with _kill_switch(state, audit, keys) as switch:
        released = switch.release(by=by, reason=reason, agent=agent, session=session,
                                  tool=tool, everything=all_, proof=proof)
    typer.echo("released" if released else "was not engaged")
    raise typer.Exit(0 if released else 1)


def _release_authority(keys_file: Path | None, key: Path | None, by: str, reason: str,
                       agent: str | None, session: str | None, tool: str | None,
                       everything: bool) -> tuple[dict[str, str], str]:
    """The release keys from their file and the proof signed with ``key`` (exit 2 on error)."""
    if keys_file is None or key is None:
        _fail("error: a signed release needs both --release-keys and --key")
    from bastion.mesh import Identity
    from bastion.policy._yaml import read_source, read_yaml
    from bastion.runtime import release_proof

    try:
        doc = read_yaml(read_source(keys_file), str(keys_file))
        if not isinstance(doc, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
            _fail(f"{keys_file}: error: expected a map of name to did:key")
        proof = release_proof(Identity.load(key).private_key, by=by, reason=reason, agent=agent,
                              session=session, tool=tool, everything=everything)
    except BastionError as exc:
        _fail(f"error: {exc}")
    return {str(k): str(v) for k, v in doc.items()}, proof


@app.command()
def kills(state: Annotated[str, typer.Option("--state")]) -> None:
    """List the engaged kill-switch flags as JSON lines."""
    with _kill_switch(state, None) as switch:
        for key, record in sorted(switch.engaged().items()):
            typer.echo(json.dumps({"flag": key, **record}))


@app.command()
def demo(workdir: Annotated[Path, typer.Option("--dir", help="Where to write files.")] = Path(
        "demo-out")) -> None:
    """Run a scripted, governed agent that shows the main features."""
    from bastion._demo import run_demo

    if workdir.exists() and not workdir.is_dir():
        _fail(f"{workdir}: error: not a directory")
    try:
        code = run_demo(workdir)
    except OSError as exc:
        _fail(f"{workdir}: error: {exc.strerror or exc}")
    raise typer.Exit(code)


def main() -> None:
    app()
