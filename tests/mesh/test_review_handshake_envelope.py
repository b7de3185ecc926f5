"""Review: a relaying man in the middle, cached admissions after a trust drop, envelopes in
another canonical form, and agent cards that cannot be encoded.

Finding (fixed in ``bastion/mesh/_cards.py``): ``verify_card`` raised ``ValueError`` instead of
``VerificationError`` for a card holding a value canonical JSON refuses (NaN).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import orjson
import pytest
from mesh_fixtures import NOW, ident

from bastion._canon import canonical_json
from bastion.kernel import Action, Kernel
from bastion.mesh import (
    Admission,
    EnvelopeError,
    HandshakeError,
    HandshakeServer,
    SQLiteMeshStore,
    TokenGuard,
    TrustEngine,
    TrustFacts,
    VerificationError,
    handshake,
    issue_token,
    open_envelope,
    prove_call,
    seal,
    sign_card,
    unsafe_admit_any,
    verify_card,
)
from bastion.mesh._envelope import DOMAIN as ENVELOPE_DOMAIN
from bastion.mesh._handshake import _post
from bastion.mesh._tokens import b64e

ROOT, ALICE, BOB, MALLORY = ident(1), ident(2), ident(3), ident(4)
Rewrite = Callable[[str, dict[str, Any]], dict[str, Any]]


@pytest.fixture
def bob_server() -> Iterator[HandshakeServer]:
    server = HandshakeServer(BOB, admit=unsafe_admit_any).start()
    yield server
    server.stop()


def _relay(target: str, rewrite: Rewrite) -> ThreadingHTTPServer:
    """Mallory's relay: forwards every POST to ``target`` after ``rewrite``, and the answer back."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, reply = _post(target + self.path, rewrite(self.path, msg), 5.0)
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    return server


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _as_mallory(path: str, msg: dict[str, Any]) -> dict[str, Any]:
    return {**msg, "from": MALLORY.did}


def test_a_relay_is_exposed_by_pinning_and_cannot_get_itself_admitted(
        bob_server: HandshakeServer) -> None:
    plain = _relay(bob_server.url, lambda path, msg: msg)
    try:  # unpinned, alice learns she reached bob, not mallory
        assert handshake(ALICE, _url(plain), admit=unsafe_admit_any) == BOB.did
        with pytest.raises(HandshakeError) as err:  # pinned: the relay is refused
            handshake(ALICE, _url(plain), admit=unsafe_admit_any, expect=MALLORY.did)
        assert err.value.reason == "unknown_key"
    finally:
        plain.shutdown()
    for rewrite in (_as_mallory,  # bob then signs for mallory: alice's check fails
                    lambda path, msg: _as_mallory(path, msg) if "confirm" in path else msg):
        relay = _relay(bob_server.url, rewrite)
        try:
            with pytest.raises(HandshakeError):
                handshake(ALICE, _url(relay), admit=unsafe_admit_any)
        finally:
            relay.shutdown()
    assert not bob_server.peers.trusted(MALLORY.did)


def test_a_cached_peer_is_dropped_once_its_recorded_trust_falls(store: SQLiteMeshStore,
                                                              tmp_path: Path) -> None:
    store.register("alice", ALICE.did, now=NOW)
    store.register("bob", BOB.did, now=NOW)
    token = issue_token(ROOT, audience=ALICE.did, scopes=["tool:*"], now=NOW).encode()
    guard = TokenGuard(roots={ROOT.did}, registry=store, nonces=store, clock=lambda: NOW)
    policy = "version: 1\nrules:\n  - {id: no-drop, tools: [drop_*], effect: deny}\n"
    with Kernel.from_text(policy, audit=str(tmp_path / "a.db"), guards=[guard],
                          clock=lambda: int(NOW * 1e9)) as k:
        facts = TrustFacts(TrustEngine(k.audit, registry=store, clock=lambda: NOW),
                           registry=store, ttl_s=0)
        admit = Admission(store, facts=facts, min_trust=300)
        server = HandshakeServer(BOB, admit=admit).start()
        try:
            assert handshake(ALICE, server.url, admit=admit) == BOB.did
            assert server.peers.trusted(ALICE.did)
            proof = prove_call(ALICE, token, "drop_db", {}, now=NOW)
            d = k.evaluate(Action(tool="drop_db", agent={"id": "alice"}, context={
                "bastion_token": token, "bastion_token_proof": proof}))
            assert d.rule_ids == ("no-drop",)
            assert facts("alice")["trust"] < 300
            assert not server.peers.trusted(ALICE.did)
        finally:
            server.stop()


def test_envelopes_in_another_canonical_form_are_refused(store: SQLiteMeshStore) -> None:
    wire = seal(ALICE, BOB.did, b"pay 10", now=NOW)
    outer = orjson.loads(wire)
    header = outer["h"]
    variants = [
        json.dumps(outer).encode(),  # white space
        json.dumps({"h": header, "b": outer["b"]}, separators=(",", ":")).encode(),  # key order
        wire.replace(b'"v":1', b'"v":1,"v":1', 1),  # duplicate key
        canonical_json({"h": header, "b": outer["b"] + "="}),  # padded base64
        canonical_json({"h": {**header, "ts": float(header["ts"])}, "b": outer["b"]}),
    ]
    for bad in variants:
        with pytest.raises(EnvelopeError) as err:
            open_envelope(bad, recipient=BOB.did, nonces=store, now=NOW)
        assert err.value.reason == "malformed"
    # a signature over a non-canonical encoding of the header does not verify
    unsigned = {k: v for k, v in header.items() if k != "sig"}
    loose = json.dumps(unsigned, indent=1).encode()
    resigned = {**header, "sig": b64e(ALICE.sign(ENVELOPE_DOMAIN, loose))}
    with pytest.raises(EnvelopeError) as err:
        open_envelope(canonical_json({"h": resigned, "b": outer["b"]}), recipient=BOB.did,
                      nonces=store, now=NOW)
    assert err.value.reason == "signature"
    # another body under the signed digest, and the genuine envelope opens once
    with pytest.raises(EnvelopeError) as err:
        open_envelope(canonical_json({"h": header, "b": b64e(b"pay 99")}), recipient=BOB.did,
                      nonces=store, now=NOW)
    assert err.value.reason == "digest"
    assert open_envelope(wire, recipient=BOB.did, nonces=store, now=NOW).body == b"pay 10"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1: "x"}])
def test_a_card_that_cannot_be_encoded_is_a_verification_error(value: Any) -> None:
    card = {"name": "bob", "version": "1"}
    sig = sign_card(card, BOB)
    with pytest.raises(VerificationError) as err:
        verify_card({**card, "extra": value, "signatures": [sig]}, did=BOB.did)
    assert err.value.reason == "malformed"
    verify_card({**card, "signatures": [sig]}, did=BOB.did)  # the card as signed verifies
