"""Review round 3 of ``bastion.mesh``: each test asserts the behaviour the docs promise; each
failed before its fix.

Findings:

* ``TokenGuard`` accepts a proof of possession by a *rotated-out* key when the agent's id is
  its first DID: the claimed agent id is itself an accepted audience and a DID-shaped audience
  is used as the proof key as is, not resolved to the registry's current key.
* ``HandshakeServer`` signs, in its ``hello`` answer, exactly what a client signs to
  ``confirm``: anyone can use an agent's server as an oracle to get that agent admitted by a
  third server it never spoke to.
* ``TrustEngine`` decides whether an attester's trust is high enough with the trust decayed to
  *now* (the engine's clock), not to when the attestation was recorded: a later re-read of the
  same log (a restart, ``bastion trust show``) drops a severe attestation that counted live.
* ``bastion token revoke ID`` records any ``sha256:``-prefixed text and reports it revoked: a
  mis-cased or truncated id revokes nothing, yet the command succeeds.
* A PostgreSQL URL whose password holds a bad percent-escape puts the password in the
  ``StateError``; a malformed host is a bare ``ValueError``.
* ``verify_rotation`` / ``MeshStore.rotate`` raise ``ValueError``/``TypeError`` for a statement
  whose ``at`` canonical JSON refuses, instead of ``RegistryError``.
* A token link with ``"v": true`` or ``"v": 1.0`` verifies (``True == 1 == 1.0``).
* On PostgreSQL an envelope (signed by its sender) whose nonce holds a NUL raises
  ``StateError`` instead of ``EnvelopeError('malformed')``; SQLite accepts the same envelope.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_fixtures import NOW, POSTGRES_ENV, ident, with_schema
from typer.testing import CliRunner

from bastion import ConfigError, StateError
from bastion._canon import canonical_json
from bastion.kernel import Action
from bastion.mesh import (
    EnvelopeError,
    HandshakeServer,
    RegistryError,
    SQLiteMeshStore,
    TokenError,
    TokenGuard,
    TrustConfig,
    TrustEngine,
    issue_token,
    make_attestation,
    open_envelope,
    open_mesh_store,
    prove_call,
    rotation_statement,
    seal,
    unsafe_admit_any,
    verify_rotation,
    verify_token,
)
from bastion.mesh._cli import app
from bastion.mesh._handshake import _post
from bastion.mesh._tokens import PREFIX, _sign_link, b64e

ROOT, ALICE, BOB, MALLORY = ident(1), ident(2), ident(3), ident(4)
DAY = 86400


# -- 1. rotation does not retire a key whose DID is also the agent's id ----------------------------

def test_a_rotated_out_key_cannot_prove_calls_for_an_agent_named_by_its_first_did(
        store: SQLiteMeshStore) -> None:
    old, new = ALICE, ident(5)
    agent = old.did  # natural when agents were first run without a registry (id = DID)
    store.register(agent, old.did, now=NOW)
    token = issue_token(ROOT, audience=old.did, scopes=["tool:read"], now=NOW).encode()
    store.rotate(agent, rotation_statement(old, new, agent_id=agent, at=int(NOW)), now=NOW + 1)
    assert store.get(agent).did == new.did and not store.is_current_key(old.did)
    guard = TokenGuard(roots={ROOT.did}, registry=store, revocations=store, nonces=store,
                       clock=lambda: NOW + 2)
    proof = prove_call(old, token, "read", {}, now=NOW + 2)  # signed by the retired key
    action = Action(tool="read", args={}, agent={"id": agent},
                    context={"bastion_token": token, "bastion_token_proof": proof})
    assert guard(action, "read", agent) is not None


# -- 2. the handshake server is a signing oracle for the client's confirm proof --------------------

@pytest.fixture
def servers() -> Iterator[tuple[HandshakeServer, HandshakeServer]]:
    alice = HandshakeServer(ALICE, admit=unsafe_admit_any).start()
    bob = HandshakeServer(BOB, admit=unsafe_admit_any).start()
    yield alice, bob
    alice.stop()
    bob.stop()


def test_a_peer_is_not_admitted_by_proofs_its_own_server_handed_to_someone_else(
        servers: tuple[HandshakeServer, HandshakeServer]) -> None:
    alice_server, bob_server = servers
    # mallory opens a handshake with bob claiming to be alice ...
    status, hello = _post(bob_server.url + "/bastion/handshake/hello",
                          {"from": ALICE.did, "challenge": b64e(os.urandom(32))}, 5.0)
    assert status == 200
    c2 = hello["challenge"]
    # ... asks alice's server to "prove itself" to bob over bob's challenge ...
    status, oracle = _post(alice_server.url + "/bastion/handshake/hello",
                           {"from": BOB.did, "challenge": c2}, 5.0)
    assert status == 200
    # ... and hands that signature to bob as alice's confirmation
    status, _ = _post(bob_server.url + "/bastion/handshake/confirm",
                      {"from": ALICE.did, "challenge": c2, "proof": oracle["proof"]}, 5.0)
    assert status == 403 and not bob_server.peers.trusted(ALICE.did)


# -- 3. an attester's trust is judged at read time, not at the attestation's time ------------------

def _allowed(agent: str, t: float, n: int) -> dict[str, Any]:
    return {"kind": "decision", "id": f"d-{agent}-{n}", "ts": int(t * 1e9), "agent": agent,
            "stage": "pre_tool", "guards": ["capability_token"], "effect": "allow",
            "code": "policy", "rule_ids": ["rest"],
            "context": {"bastion_token": {"$masked": "sha256:00"}}}


def test_an_attestation_counts_the_same_whenever_the_log_is_read(
        store: SQLiteMeshStore) -> None:
    store.register("issuer", ALICE.did, now=NOW)
    store.register("subject", BOB.did, now=NOW)
    events: list[dict[str, Any]] = [_allowed("issuer", NOW + i, i) for i in range(20)]  # 320
    att = make_attestation(ALICE, subject="subject", kind="severe", at=int(NOW) + 100)
    events.append({"kind": "attestation", "id": "att:1", "ts": int((NOW + 100) * 1e9),
                   "agent": "subject", "attestation": att})
    cfg = TrustConfig(min_attester_trust=310)

    def read_at(clock: float) -> int:
        engine = TrustEngine(None, verify_log=False, registry=store, config=cfg,
                             clock=lambda: clock)
        engine.feed(events)
        return engine.report("subject").severe_drops

    assert read_at(NOW + 200) == 1  # read live: the issuer stood at 320 >= 310
    assert read_at(NOW + 60 * DAY) == 1  # the same log, read two months later


# -- 4. the CLI reports a revocation that revokes nothing------------------------------------------

@pytest.mark.parametrize("mangle", [str.upper, lambda i: i[:20]], ids=["upper", "truncated"])
def test_cli_revoke_never_reports_an_id_that_names_no_link(tmp_path: Path, mangle: Any) -> None:
    token = issue_token(ROOT, audience=BOB.did, scopes=["tool:read"], now=NOW)
    given = mangle(token.id)
    given = "sha256:" + given[7:] if not given.startswith("sha256:") else given
    db = tmp_path / "mesh.db"
    result = CliRunner().invoke(app, ["token", "revoke", given, "--store", str(db)])
    store = open_mesh_store(db)
    try:
        revoked = store.first_revoked(token.ids) is not None
    finally:
        store.close()
    assert result.exit_code != 0 or revoked  # refused, or really revoked


# -- 5. PostgreSQL URLs: the password in an error, a malformed host--------------------------------

def test_a_password_with_a_bad_escape_never_appears_in_the_error() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(StateError) as err:  # fails while parsing the URL: no server contacted
        open_mesh_store("postgresql://app:%zzTopSecret42@127.0.0.1:1/db")
    assert "TopSecret42" not in str(err.value)


def test_a_malformed_postgres_url_is_a_config_error() -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(ConfigError):
        open_mesh_store("postgresql://app:pw@[::1/db")


# -- 6. rotation statements that cannot be encoded ------------------------------------------------

@pytest.mark.parametrize("at", [float("nan"), object()], ids=["nan", "object"])
def test_a_rotation_statement_that_cannot_be_encoded_is_a_registry_error(
        store: SQLiteMeshStore, at: Any) -> None:
    store.register("alice", ALICE.did, now=NOW)
    statement = {**rotation_statement(ALICE, ident(5), agent_id="alice", at=1), "at": at}
    with pytest.raises(RegistryError):
        verify_rotation(statement, agent_id="alice", current_did=ALICE.did)
    with pytest.raises(RegistryError):
        store.rotate("alice", statement, now=NOW)
    assert store.get("alice").did == ALICE.did


# -- 7. the link version is compared with ==, not as the integer 1 ---------------------------------

@pytest.mark.parametrize("version", [True, 1.0], ids=["true", "float"])
def test_a_link_version_must_be_the_integer_1(version: Any) -> None:
    body = {"v": version, "iss": ROOT.did, "aud": BOB.did, "scopes": ["tool:read"], "cons": {},
            "iat": int(NOW), "exp": int(NOW) + 60, "nonce": "00", "prev": None}
    text = PREFIX + b64e(canonical_json([_sign_link(ROOT, body)]))
    with pytest.raises(TokenError) as err:
        verify_token(text, roots={ROOT.did}, now=NOW)
    assert err.value.reason == "malformed"


# -- 8. PostgreSQL: an envelope nonce the store cannot hold----------------------------------------

@pytest.fixture
def pg_store() -> Iterator[Any]:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    psycopg = pytest.importorskip("psycopg")
    from psycopg import sql

    schema = f"review3_{uuid.uuid4().hex[:12]}"
    store = open_mesh_store(with_schema(url, schema))
    try:
        yield store
    finally:
        store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(
                sql.Identifier(schema)))


def test_an_envelope_nonce_with_a_nul_is_malformed_on_postgres(pg_store: Any) -> None:
    with pytest.raises(EnvelopeError):  # seal refuses to write one
        seal(MALLORY, BOB.did, b"hi", now=NOW, nonce="ab\x00cd")
    from bastion._canon import canonical_json
    from bastion.mesh._envelope import DOMAIN, _body_digest
    from bastion.mesh._tokens import b64e

    header: dict[str, Any] = {"v": 1, "from": MALLORY.did, "to": BOB.did,
                              "ts": int(NOW * 1000), "nonce": "ab\x00cd",
                              "digest": _body_digest(b"hi")}  # signed by a sender all the same
    header["sig"] = b64e(MALLORY.sign(DOMAIN, canonical_json(header)))
    wire = canonical_json({"h": header, "b": b64e(b"hi")})
    with pytest.raises(EnvelopeError) as err:
        open_envelope(wire, recipient=BOB.did, nonces=pg_store, now=NOW)
    assert err.value.reason == "malformed"
