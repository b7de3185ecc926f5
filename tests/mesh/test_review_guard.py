"""Review: the token guard's proof of possession under replay.

Findings (fixed in ``bastion/mesh/_guard.py``):

* a proof's nonce was held only ``skew_s + 1`` seconds of the guard that claimed it, so a guard
  sharing the nonce store with a wider window (another process, another config) accepted the
  same proof again once the first guard's hold lapsed. Nonces are now held for ``MAX_SKEW_S``,
  the widest window any guard may be configured with.
* ``ts`` was read with ``float()``: a holder-signed ``"nan"`` was never stale (``abs(now - nan)
  > skew`` is false) — accepted forever by a nonce store that keeps NaN expiries (PostgreSQL
  never prunes them), a store error on SQLite. ``ts`` must now be a finite JSON number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mesh_fixtures import NOW, ident

from bastion._canon import canonical_json
from bastion.kernel import Action, Kernel, govern
from bastion.mesh import SQLiteMeshStore, TokenGuard, issue_token, open_mesh_store, prove_call
from bastion.mesh._guard import MAX_SKEW_S, PROOF_DOMAIN, _call_body
from bastion.mesh._tokens import b64e

ROOT, BOB, MALLORY = ident(1), ident(3), ident(4)


class DictNonces:
    """A nonce store that keeps whatever it is given (as a remote store might)."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], float] = {}

    def claim_nonce(self, scope: str, nonce: str, *, expires: float, now: float) -> bool:
        self.held = {k: v for k, v in self.held.items() if not v < now}
        if (scope, nonce) in self.held:
            return False
        self.held[(scope, nonce)] = expires
        return True


def _act(token: str, proof: str, tool: str = "read", **args: Any) -> Action:
    return Action(tool=tool, args=args, agent={"id": "bob"},
                  context={"bastion_token": token, "bastion_token_proof": proof})


def _raw_proof(token: str, ts: Any, nonce: Any = "n1", tool: str = "read") -> str:
    body = _call_body(token, tool, {}, ts, nonce)
    assert body is not None
    return b64e(canonical_json({**body, "sig": b64e(BOB.sign(PROOF_DOMAIN,
                                                             canonical_json(body)))}))


def test_a_used_proof_is_refused_by_a_guard_with_a_wider_window(tmp_path: Path) -> None:
    one, two = open_mesh_store(tmp_path / "m.db"), open_mesh_store(tmp_path / "m.db")
    try:
        one.register("bob", BOB.did, now=NOW)  # one file: both stores see bob
        token = issue_token(ROOT, audience=BOB.did, scopes=["tool:read"], now=NOW).encode()
        proof = prove_call(BOB, token, "read", {}, now=NOW)
        strict = TokenGuard(roots={ROOT.did}, registry=one, nonces=one, clock=lambda: NOW)
        assert strict(_act(token, proof), "read", "bob") is None
        later = NOW + 100  # past the strict guard's 30 s, inside the wide guard's 300 s
        wide = TokenGuard(roots={ROOT.did}, registry=two, nonces=two, clock=lambda: later,
                          skew_s=MAX_SKEW_S)
        refusal = wide(_act(token, proof), "read", "bob")
        assert refusal is not None and "replay" in refusal
    finally:
        one.close()
        two.close()


def test_no_guard_accepts_more_skew_than_nonces_are_held(store: SQLiteMeshStore) -> None:
    with pytest.raises(ValueError, match="skew_s"):
        TokenGuard(roots={ROOT.did}, nonces=store, skew_s=MAX_SKEW_S + 1)
    with pytest.raises(ValueError, match="skew_s"):
        TokenGuard(roots={ROOT.did}, nonces=store, skew_s=0)


@pytest.mark.parametrize("ts", ["nan", "NaN", "1750000000", None, True, [NOW]])
def test_proof_time_must_be_a_finite_number(store: SQLiteMeshStore, ts: Any) -> None:
    store.register("bob", BOB.did, now=NOW)
    token = issue_token(ROOT, audience=BOB.did, scopes=["tool:read"], ttl_s=10**8,
                        now=NOW).encode()
    for nonces in (DictNonces(), store):
        guard = TokenGuard(roots={ROOT.did}, registry=store, nonces=nonces,
                           clock=lambda: NOW + 10**7)  # months after the proof was "made"
        refusal = guard(_act(token, _raw_proof(token, ts)), "read", "bob")
        assert refusal == "the proof of possession is malformed"


def test_proof_nonce_must_be_a_short_string(store: SQLiteMeshStore) -> None:
    store.register("bob", BOB.did, now=NOW)
    token = issue_token(ROOT, audience=BOB.did, scopes=["tool:read"], now=NOW).encode()
    guard = TokenGuard(roots={ROOT.did}, registry=store, nonces=store, clock=lambda: NOW)
    for nonce in ("", "n" * 129, 7, ["n"]):
        assert guard(_act(token, _raw_proof(token, NOW, nonce)), "read", "bob") \
            == "the proof of possession is malformed"
    assert guard(_act(token, _raw_proof(token, NOW, "n" * 128)), "read", "bob") is None


def test_a_proof_binds_token_tool_and_arguments(store: SQLiteMeshStore) -> None:
    store.register("bob", BOB.did, now=NOW)
    a = issue_token(ROOT, audience=BOB.did, scopes=["tool:*"], now=NOW).encode()
    b = issue_token(ROOT, audience=BOB.did, scopes=["tool:*"], now=NOW).encode()
    guard = TokenGuard(roots={ROOT.did}, registry=store, nonces=store, clock=lambda: NOW)
    proof = prove_call(BOB, a, "read", {"path": "/a"}, now=NOW)
    for action in (_act(b, proof, path="/a"), _act(a, proof, "write", path="/a"),
                   _act(a, proof, path="/b"), _act(a, proof, path="/a", extra=1),
                   _act(a, proof, path=["/a"])):
        refusal = guard(action, str(action.tool), "bob")
        assert refusal is not None and "another token, tool or arguments" in refusal
    assert guard(_act(a, proof, "READ", path="/a"), "read", "bob") is None  # canonical name
    assert "replay" in str(guard(_act(a, proof, path="/a"), "read", "bob"))
    stale = prove_call(BOB, a, "read", {}, now=NOW - 31)
    assert "stale" in str(guard(_act(a, stale), "read", "bob"))
    future = prove_call(BOB, a, "read", {}, now=NOW + 31)
    assert "stale" in str(guard(_act(a, future), "read", "bob"))


def test_a_token_or_agent_id_in_the_call_arguments_never_counts(store: SQLiteMeshStore) -> None:
    store.register("bob", BOB.did, now=NOW)
    store.register("mallory", MALLORY.did, now=NOW)
    token = issue_token(ROOT, audience=BOB.did, scopes=["tool:*"], now=NOW).encode()
    proof = prove_call(BOB, token, "pay", {"amount": 1}, now=NOW)
    guard = TokenGuard(roots={ROOT.did}, registry=store, nonces=store, clock=lambda: NOW)
    policy = "version: 1\nrules:\n  - {id: all, effect: allow}\n"
    with Kernel.from_text(policy, guards=[guard]) as k:
        smuggled = Action(tool="pay", agent={"id": "mallory"}, args={
            "amount": 1, "bastion_token": token, "bastion_token_proof": proof,
            "agent": {"id": "bob"}})
        d = k.evaluate(smuggled)
        assert d.code == "guard" and "no capability token" in d.reasons[0]

        @govern(k, agent={"id": "mallory"})
        def pay(amount: int, bastion_token: str = "", bastion_token_proof: str = "") -> int:
            return amount

        from bastion import GovernanceDenied

        with pytest.raises(GovernanceDenied) as err:
            pay(1, bastion_token=token, bastion_token_proof=proof)
        assert "no capability token" in err.value.decision.reasons[0]
        # presented properly by mallory, bob's token names another audience
        d = k.evaluate(Action(tool="pay", args={"amount": 1}, agent={"id": "mallory"},
                              context={"bastion_token": token, "bastion_token_proof": proof}))
        assert d.code == "guard" and "audience" in d.reasons[0]
