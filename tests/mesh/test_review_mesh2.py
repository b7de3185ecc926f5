"""Review round 2 of ``bastion.mesh``: fail-open paths in trust, nonces, audiences, keys, the
CLI and the verify functions. Each test asserts the correct behaviour (all seven findings are
fixed).

Findings:

* ``TrustEngine`` (``_trust._authenticated``) counts a ``pre_tool`` decision that a
  ``TokenGuard(required=False)`` admitted *without* a token (``context["bastion_token"] =
  None``): anyone can sink (or credit) any claimed agent id.
* Nonces are held only to the end of the widest window (``MAX_SKEW_S`` + 1 s for proofs, + 0 s
  for envelopes) and pruned with the *caller's* clock: a process sharing the store whose clock is
  a few seconds ahead deletes a live nonce, and a used proof is accepted again.
* ``verify_token(audience="did:...")`` (a ``str`` is a ``Collection[str]``) tests membership by
  substring: a token delegated to ``"did:key:z"`` passes for every DID.
* ``did:key`` of a small-order Ed25519 point is accepted; a fixed 64-byte signature verifies
  under it for every message, so anyone can prove possession for such an identity.
* ``bastion token verify --store DB`` ignores the registry in that store: a chain delegated by a
  revoked agent is reported valid (exit 0) while ``TokenGuard`` refuses it.
* ``verify_attestation`` / ``record_attestation`` and ``verify_card`` raise ``TypeError`` /
  ``ValueError`` for malformed input instead of ``VerificationError``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from mesh_fixtures import NOW, ident
from typer.testing import CliRunner

from bastion._canon import canonical_json
from bastion.kernel import Action, Kernel
from bastion.mesh import (
    SQLiteMeshStore,
    TokenError,
    TokenGuard,
    TrustEngine,
    VerificationError,
    delegate_token,
    issue_token,
    make_attestation,
    open_mesh_store,
    prove_call,
    verify_attestation,
    verify_card,
    verify_token,
)
from bastion.mesh._cli import app
from bastion.mesh._guard import _call_body
from bastion.mesh._keys import did_from_public
from bastion.mesh._tokens import b64e

ROOT, ALICE, BOB, MALLORY = ident(1), ident(2), ident(3), ident(4)


def _act(token: str | None, proof: str | None = None, tool: str = "read",
         agent: str = "bob", **args: Any) -> Action:
    context: dict[str, Any] = {"bastion_token": token}
    if proof is not None:
        context["bastion_token_proof"] = proof
    return Action(tool=tool, args=args, agent={"id": agent}, context=context)


def test_a_tokenless_call_admitted_by_an_optional_guard_moves_no_trust(
        store: SQLiteMeshStore, tmp_path: Path) -> None:
    store.register("bob", BOB.did, now=NOW)
    guard = TokenGuard(roots={ROOT.did}, registry=store, revocations=store, nonces=store,
                       required=False, clock=lambda: NOW)
    policy = ("version: 1\nrules:\n  - {id: no-drop, tools: [drop_*], effect: deny}\n"
              "  - {id: rest, tools: ['*'], effect: allow}\n")
    audit = tmp_path / "audit.db"
    with Kernel.from_text(policy, audit=str(audit), guards=[guard],
                          clock=lambda: int(NOW * 1e9)) as k:
        for _ in range(3):  # mallory, holding nothing, acts in bob's name
            d = k.evaluate(_act(None, tool="drop_db"))
            assert d.rule_ids == ("no-drop",)
    engine = TrustEngine(str(audit), registry=store, clock=lambda: NOW)
    engine.refresh()
    report = engine.report("bob")
    # nobody proved to be bob: neither blame nor credit (today: 3 violations, 300 -> 180)
    assert (report.score, report.events) == (300, 0), report.to_dict()


def test_a_peer_clock_a_few_seconds_ahead_does_not_reopen_a_used_proof(tmp_path: Path) -> None:
    one, two = open_mesh_store(tmp_path / "m.db"), open_mesh_store(tmp_path / "m.db")
    try:
        one.register("bob", BOB.did, now=NOW)
        token = issue_token(ROOT, audience=BOB.did, scopes=["tool:read"], now=NOW).encode()
        t_b = [NOW]
        wide = TokenGuard(roots={ROOT.did}, registry=one, nonces=one, clock=lambda: t_b[0],
                          skew_s=300)
        ahead = TokenGuard(roots={ROOT.did}, registry=two, nonces=two,
                           clock=lambda: NOW + 302)  # another process, clock 3 s ahead
        used = prove_call(BOB, token, "read", {}, now=NOW)
        assert wide(_act(token, used), "read", "bob") is None  # the genuine call
        # any later legitimate call at the other process (its "now" is NOW + 302)
        other = prove_call(BOB, token, "read", {}, now=NOW + 302)
        assert ahead(_act(token, other), "read", "bob") is None
        t_b[0] = NOW + 299  # still inside the wide guard's window
        refusal = wide(_act(token, used), "read", "bob")
        assert refusal is not None and "replay" in refusal, refusal
    finally:
        one.close()
        two.close()


def test_an_audience_given_as_one_string_is_not_a_substring_match() -> None:
    mine = issue_token(ROOT, audience=MALLORY.did, scopes=["tool:*"], now=NOW)
    # mallory re-addresses her own token to a prefix every did:key shares
    anyone = delegate_token(mine, MALLORY, audience="did:key:z", now=NOW).encode()
    try:
        verify_token(anyone, roots={ROOT.did}, now=NOW, audience=BOB.did)  # "for bob only"
        reason = None
    except TokenError as exc:
        reason = exc.reason
    assert reason == "audience"


def test_a_small_order_did_key_cannot_prove_possession_for_anyone(tmp_path: Path) -> None:
    identity_point = bytes([1]) + bytes(31)  # encoding of the neutral element (order 1)
    ghost = did_from_public(identity_point)
    universal = identity_point + bytes(32)  # R = neutral element, S = 0
    token = issue_token(ROOT, audience=ghost, scopes=["tool:read"], now=NOW).encode()
    nonces = open_mesh_store(tmp_path / "m.db")
    try:
        guard = TokenGuard(roots={ROOT.did}, nonces=nonces, clock=lambda: NOW)
        body = _call_body(token, "read", {}, NOW, "n1")
        assert body is not None
        forged = b64e(canonical_json({**body, "sig": b64e(universal)}))  # made without a key
        refusal = guard(_act(token, forged, agent=ghost), "read", ghost)
        assert refusal is not None, "a proof nobody signed was accepted"
    finally:
        nonces.close()


def test_cli_verify_refuses_a_chain_delegated_by_a_revoked_agent(tmp_path: Path) -> None:
    reg = tmp_path / "mesh.db"
    store = open_mesh_store(reg)
    try:
        store.register("alice", ALICE.did, now=NOW)
        store.register("bob", BOB.did, now=NOW)
        now = time.time()
        parent = issue_token(ROOT, audience=ALICE.did, scopes=["tool:read"], now=now)
        child = delegate_token(parent, ALICE, audience=BOB.did, now=now).encode()
        store.revoke_agent("alice")  # alice's key is compromised: her delegations must die
        guard = TokenGuard(roots={ROOT.did}, registry=store, revocations=store, nonces=store)
        refusal = guard(Action(tool="read", stage="post_tool", agent={"id": "bob"},
                               context={"bastion_token": child}), "read", "bob")
        assert refusal is not None and "issuer" in refusal  # the guard refuses it
    finally:
        store.close()
    result = CliRunner().invoke(app, ["token", "verify", child, "--root", ROOT.did,
                                      "--store", str(reg)])
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.exit_code == 1 and out.get("valid") is False, out


@pytest.mark.parametrize("field", [{"issuer": ["did:key:z"]}, {"reason": float("nan")}])
def test_a_malformed_attestation_is_a_verification_error(field: dict[str, Any]) -> None:
    att = make_attestation(ALICE, subject="bob", kind="positive", at=0)
    with pytest.raises(VerificationError):
        verify_attestation({**att, **field})


def test_a_card_that_is_not_a_mapping_is_a_verification_error() -> None:
    with pytest.raises(VerificationError):
        verify_card(["name", "bob"], did=BOB.did)


def test_a_proof_of_possession_is_recorded_by_digest_only(tmp_path: Path) -> None:
    """Like the token itself, the proof that travels beside it is a credential: the audit log
    keeps its digest, not its text (review note)."""
    from bastion.audit import read_events

    audit = tmp_path / "audit.db"
    policy = "version: 1\nrules:\n  - {id: rest, tools: ['*'], effect: allow}\n"
    with Kernel.from_text(policy, audit=str(audit)) as k:
        k.evaluate(_act("tok", "proof-text", tool="read"))
    [event] = list(read_events(audit))
    assert set(event["context"]["bastion_token_proof"]) == {"$masked"}
    assert "proof-text" not in str(event)


def test_cli_verify_with_call_arguments_that_are_not_an_object_is_an_error() -> None:
    """`token verify --tool T --args '"x"'` is an input error (exit 2), not a crash (review
    note)."""
    token = issue_token(ROOT, audience=BOB.did, scopes=["tool:read"], now=time.time()).encode()
    result = CliRunner().invoke(app, ["token", "verify", token, "--root", ROOT.did,
                                      "--tool", "read", "--args", '"x"'])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "expected a json object" in result.output


def test_a_repeated_outcome_report_earns_no_more_trust(tmp_path: Path) -> None:
    """One allowed call reported as succeeded again and again counts once (review note)."""
    from bastion.mesh import TrustConfig

    audit = tmp_path / "audit.db"
    policy = "version: 1\nrules:\n  - {id: rest, tools: ['*'], effect: allow}\n"
    with Kernel.from_text(policy, audit=str(audit), clock=lambda: int(NOW * 1e9)) as k:
        decision = k.evaluate(Action(tool="read", agent={"id": "bob"}))
        for _ in range(5):
            k.record_outcome(decision, "succeeded")
    engine = TrustEngine(str(audit), config=TrustConfig(authenticated_only=False),
                         clock=lambda: NOW)
    engine.refresh()
    assert engine.report("bob").events == 2  # the decision and one outcome
