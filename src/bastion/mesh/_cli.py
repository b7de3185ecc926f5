"""``bastion id|token|trust``: the mesh's commands, mounted by ``bastion.cli``.

Exit codes follow DESIGN.md: 0 success or valid, 1 refused (a token that does not verify),
2 an error in what was given. Output is JSON on stdout; errors go to stderr.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bastion._cli_common import existing_store, parse_json
from bastion._cli_common import fail as _fail
from bastion._errors import BastionError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Agent identities, capability tokens and trust.")
id_app = typer.Typer(no_args_is_help=True, help="Create, show and rotate agent keys (did:key).")
token_app = typer.Typer(no_args_is_help=True, help="Issue, delegate, verify, revoke tokens.")
trust_app = typer.Typer(no_args_is_help=True, help="Trust scores from the audit log.")
app.add_typer(id_app, name="id")
app.add_typer(token_app, name="token")
app.add_typer(trust_app, name="trust")

KeyOpt = Annotated[Path, typer.Option("--key", "-k", help="Key file (0600).")]
RegistryOpt = Annotated[str | None, typer.Option("--registry", help="Mesh store path.")]


def _out(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, sort_keys=True))


def _json(name: str, text: str | None) -> Any:
    if text is None:
        return None
    return parse_json(name, text)


@id_app.command("new")
def id_new(key: KeyOpt, agent: Annotated[str | None, typer.Option("--agent")] = None,
           registry: RegistryOpt = None,
           role: Annotated[list[str] | None, typer.Option("--role")] = None) -> None:
    """Create a key file and print its DID; with --agent and --registry, register the agent."""
    from bastion.mesh import Identity, open_mesh_store

    try:
        ident = Identity.generate()
        ident.save(key)
        if agent and registry:
            store = open_mesh_store(registry)
            try:
                store.register(agent, ident.did, roles=role or (), now=time.time())
            finally:
                store.close()
    except BastionError as exc:
        _fail(f"error: {exc}")
    _out({"did": ident.did, "key": str(key), "agent": agent})


@id_app.command("show")
def id_show(key: KeyOpt) -> None:
    """Print the DID of a key file."""
    from bastion.mesh import Identity

    try:
        _out({"did": Identity.load(key).did, "key": str(key)})
    except BastionError as exc:
        _fail(f"error: {exc}")


@id_app.command("rotate")
def id_rotate(key: KeyOpt, out: Annotated[Path, typer.Option("--out", help="New key file.")],
              agent: Annotated[str, typer.Option("--agent")],
              registry: RegistryOpt = None) -> None:
    """Create a successor key, print the hand-over statement signed by the old and new keys;
    with --registry, move the agent to the new key."""
    from bastion.mesh import Identity, open_mesh_store, rotation_statement

    try:
        old = Identity.load(key)
        new = Identity.generate()
        statement = rotation_statement(old, new, agent_id=agent, at=int(time.time()))
        if registry:
            existing_store(registry, "mesh store")  # a rotation no one reads is none
        new.save(out)  # the new key exists on disk before the registry points at it
        if registry:
            store = open_mesh_store(registry)
            try:
                store.rotate(agent, statement, now=time.time())
            finally:
                store.close()
    except BastionError as exc:
        _fail(f"error: {exc}")
    _out({"did": new.did, "key": str(out), "statement": statement})


@token_app.command("issue")
def token_issue(key: KeyOpt, aud: Annotated[str, typer.Option("--aud")],
                scope: Annotated[list[str], typer.Option("--scope", "-s")],
                constraints: Annotated[str | None, typer.Option("--constraints")] = None,
                ttl: Annotated[int, typer.Option("--ttl", help="Seconds.")] = 3600) -> None:
    """Issue a root token signed by --key for --aud (a DID or agent id)."""
    from bastion.mesh import Identity, issue_token

    try:
        token = issue_token(Identity.load(key), audience=aud, scopes=scope,
                            constraints=_json("--constraints", constraints), ttl_s=ttl,
                            now=time.time())
    except BastionError as exc:
        _fail(f"error: {exc}")
    _out({"token": token.encode(), "id": token.id})


@token_app.command("delegate")
def token_delegate(token: str, key: KeyOpt, aud: Annotated[str, typer.Option("--aud")],
                   scope: Annotated[list[str] | None, typer.Option("--scope", "-s")] = None,
                   constraints: Annotated[str | None, typer.Option("--constraints")] = None,
                   ttl: Annotated[int | None, typer.Option("--ttl")] = None) -> None:
    """Delegate TOKEN (held by --key) to --aud, narrowed by --scope and --constraints."""
    from bastion.mesh import Identity, delegate_token

    try:
        child = delegate_token(token, Identity.load(key), audience=aud, scopes=scope or None,
                               constraints=_json("--constraints", constraints), ttl_s=ttl,
                               now=time.time())
    except BastionError as exc:
        _fail(f"error: {exc}")
    _out({"token": child.encode(), "id": child.id})


@token_app.command("verify")
def token_verify(token: str, root: Annotated[list[str], typer.Option("--root")],
                 aud: Annotated[list[str] | None, typer.Option("--aud")] = None,
                 store: Annotated[str | None, typer.Option("--store",
                                                           help="Mesh store (revocations).")]
                 = None,
                 tool: Annotated[str | None, typer.Option("--tool")] = None,
                 args: Annotated[str | None, typer.Option("--args")] = None) -> None:
    """Verify TOKEN against trusted --root DIDs (and a call, with --tool): exit 0 valid, 1 not."""
    from bastion.mesh import VerificationError, open_mesh_store, verify_token

    try:
        if store:
            existing_store(store, "mesh store")  # a typo must not hide a revocation
        revocations = open_mesh_store(store) if store else None
    except BastionError as exc:
        _fail(f"error: {exc}")
    try:
        verified = verify_token(token, roots=root, now=time.time(), audience=aud,
                                revocations=revocations,  # a revoked or rotated delegator too
                                issuer_ok=revocations.is_current_key if revocations else None)
        call_args = _json("--args", args) or {}
        if not isinstance(call_args, dict):
            _fail("--args:1:1: error: expected a json object")
        problem = verified.permits(tool, call_args) if tool else None
    except VerificationError as exc:
        _out({"valid": False, "reason": exc.reason, "error": str(exc)})
        raise typer.Exit(1) from None
    finally:
        if revocations is not None:
            revocations.close()
    result = {"valid": problem is None, "root": verified.root, "holder": verified.holder,
              "expires": verified.expires, "scopes": list(verified.scopes),
              "depth": len(verified.token.links), "id": verified.token.id}
    if problem is not None:
        result["reason"] = problem
    _out(result)
    raise typer.Exit(0 if problem is None else 1)


@token_app.command("revoke")
def token_revoke(token: Annotated[str, typer.Argument(help="A token or a token id.")],
                 store: Annotated[str, typer.Option("--store", help="Mesh store path.")],
                 reason: Annotated[str, typer.Option("--reason")] = "") -> None:
    """Revoke a token (and so everything delegated from it)."""
    from bastion.mesh import open_mesh_store, parse_token

    try:
        token_id = parse_token(token).id if token.startswith("bt1.") else token
        if re.fullmatch(r"sha256:[0-9a-f]{64}", token_id) is None:  # else it revokes nothing
            _fail(f"error: {token!r} is neither a token nor a token id (sha256: and 64 "
                  "lower-case hex digits)")
        existing_store(store, "mesh store")  # revoked where no one looks is not revoked
        db = open_mesh_store(store)
        try:
            db.revoke(token_id, reason=reason, now=time.time())
        finally:
            db.close()
    except BastionError as exc:
        _fail(f"error: {exc}")
    _out({"revoked": token_id})


@trust_app.command("show")
def trust_show(agent: str, audit: Annotated[Path, typer.Option("--audit", help="Audit log.")],
               registry: RegistryOpt = None,
               verify: Annotated[bool, typer.Option("--verify/--no-verify")] = True) -> None:
    """Print AGENT's trust score, tier, ring and the breakdown of what moved it."""
    from bastion.mesh import TrustEngine, open_mesh_store

    if not audit.exists():
        _fail(f"{audit}: error: no such audit log")
    if registry:
        existing_store(registry, "mesh store")  # an empty one would count nobody's word
    try:
        store = open_mesh_store(registry) if registry else None
    except BastionError as exc:
        _fail(f"error: {exc}")
    try:
        engine = TrustEngine(str(audit), registry=store, verify_log=verify)
        engine.refresh()
        report = engine.report(agent)
    except BastionError as exc:
        _fail(f"{audit}: error: {exc}")
    finally:
        if store is not None:
            store.close()
    _out(report.to_dict())


@trust_app.command("slo-breach")
def trust_slo_breach(agent: str, audit: Annotated[Path, typer.Option("--audit", help="Audit log.")],
                     slo: Annotated[str, typer.Option("--slo", help="The objective's name.")],
                     objective: Annotated[float, typer.Option("--objective")],
                     observed: Annotated[float, typer.Option("--observed")],
                     by: Annotated[str, typer.Option("--by", help="Who measured it.")],
                     window: Annotated[float, typer.Option("--window-s")] = 3600.0) -> None:
    """Record that AGENT breached an SLO (trust evidence, in the audit log)."""
    from bastion.audit import AuditLog
    from bastion.mesh import record_slo_breach

    if not audit.is_file():  # evidence written to a new log no trust engine reads is lost
        _fail(f"{audit}: error: no such audit log (record the breach in the fleet's log)")
    try:
        log = AuditLog.open(str(audit), durable=True)
        try:
            event_id = record_slo_breach(log, agent=agent, slo=slo, objective=objective,
                                         observed=observed, window_s=window, by=by)
        finally:
            log.close()
    except BastionError as exc:
        _fail(f"error: {exc}")
    _out({"recorded": event_id})
