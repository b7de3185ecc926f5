"""The handshake over real HTTP on 127.0.0.1, with the peer in another process; A2A cards."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_fixtures import NOW, ident

from bastion.mesh import (
    Admission,
    HandshakeError,
    HandshakeServer,
    PeerCache,
    SQLiteMeshStore,
    VerificationError,
    handshake,
    sign_card,
    unsafe_admit_any,
    verify_card,
)
from bastion.mesh._handshake import _post

ALICE, BOB, MALLORY = ident(2), ident(3), ident(66)
PEER = Path(__file__).with_name("mesh_peer.py")


def _spawn(seed: int, *extra: str) -> Iterator[tuple[str, str]]:
    proc = subprocess.Popen([sys.executable, str(PEER), str(seed), *extra],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "READY", line
        yield f"http://127.0.0.1:{line[1]}", line[2]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def peer() -> Iterator[tuple[str, str]]:
    yield from _spawn(3)


def test_two_process_handshake(peer: tuple[str, str]) -> None:
    url, did = peer
    cache = PeerCache(unsafe_admit_any)
    assert handshake(ALICE, url, admit=unsafe_admit_any, cache=cache, expect=BOB.did) == did
    assert cache.trusted(BOB.did)


def test_pinned_did_mismatch_and_refused_client(peer: tuple[str, str]) -> None:
    url, _ = peer
    with pytest.raises(HandshakeError, match="expected"):
        handshake(ALICE, url, admit=unsafe_admit_any, expect=MALLORY.did)
    with pytest.raises(HandshakeError, match="not admitted"):
        handshake(ALICE, url, admit=lambda did: "no")
    for refused_url, _ in _spawn(3, ALICE.did):
        with pytest.raises(HandshakeError, match="refused our proof"):
            handshake(ALICE, refused_url, admit=unsafe_admit_any)


def test_forged_confirm_and_replayed_challenge_are_refused(peer: tuple[str, str]) -> None:
    url, _ = peer
    status, hello = _post(url + "/bastion/handshake/hello",
                          {"from": ALICE.did, "challenge": "abc"}, 5)
    assert status == 200
    from bastion.mesh._handshake import prove

    forged = prove(MALLORY, hello["challenge"], BOB.did)  # not ALICE's key
    status, reply = _post(url + "/bastion/handshake/confirm",
                          {"from": ALICE.did, "challenge": hello["challenge"], "proof": forged}, 5)
    assert status == 403 and "signature" in reply["error"]
    good = prove(ALICE, hello["challenge"], BOB.did)
    status, _ = _post(url + "/bastion/handshake/confirm",
                      {"from": ALICE.did, "challenge": hello["challenge"], "proof": good}, 5)
    assert status == 403  # the challenge was single use


def test_cache_holds_only_while_peer_stays_admitted(store: SQLiteMeshStore) -> None:
    store.register("alice", ALICE.did, now=NOW)
    store.register("bob", BOB.did, now=NOW)
    trust = {"alice": 700, "bob": 700}
    admit = Admission(store, facts=lambda a: {"trust": trust[a]}, min_trust=500)
    server = HandshakeServer(BOB, admit=admit).start()
    try:
        cache = PeerCache(admit)
        assert handshake(ALICE, server.url, admit=admit, cache=cache) == BOB.did
        assert cache.trusted(BOB.did) and server.peers.trusted(ALICE.did)
        trust["alice"] = 100
        assert not server.peers.trusted(ALICE.did)  # fell below the required trust
        with pytest.raises(HandshakeError, match="not admitted"):
            handshake(ALICE, server.url, admit=admit)
        store.revoke_agent("bob")
        assert not cache.trusted(BOB.did)  # revoked
        with pytest.raises(HandshakeError, match="not admitted"):
            handshake(ALICE, server.url, admit=admit)
    finally:
        server.stop()


CARD = {"name": "bob", "description": "pays invoices", "version": "1.0",
        "supportedInterfaces": [{"url": "http://127.0.0.1:9/a2a", "protocolBinding": "JSONRPC"}],
        "skills": [{"id": "pay", "name": "pay", "description": "pays", "tags": ["finance"]}]}


def test_signed_agent_card_dict() -> None:
    card = {**CARD, "signatures": [sign_card(CARD, BOB)]}
    verify_card(card, did=BOB.did)
    with pytest.raises(VerificationError):
        verify_card(card, did=ALICE.did)  # bound to the DID the peer proved
    with pytest.raises(VerificationError):
        verify_card({**card, "description": "steals invoices"}, did=BOB.did)
    with pytest.raises(VerificationError):
        verify_card(CARD, did=BOB.did)


def test_signed_a2a_sdk_agent_card() -> None:
    types = pytest.importorskip("a2a.types")
    from google.protobuf.json_format import ParseDict

    card = ParseDict(CARD, types.AgentCard())
    card.signatures.append(types.AgentCardSignature(**sign_card(card, BOB)))
    verify_card(card, did=BOB.did)
    card.description = "tampered"
    with pytest.raises(VerificationError):
        verify_card(card, did=BOB.did)


def test_a_strangers_hello_cannot_cancel_a_peers_pending_challenge() -> None:
    """Review finding: a hello claiming the victim's DID overwrote the victim's challenge."""
    from bastion.mesh._handshake import prove

    server = HandshakeServer(BOB, admit=unsafe_admit_any).start()
    try:
        status, hello = _post(server.url + "/bastion/handshake/hello",
                              {"from": ALICE.did, "challenge": "c1"}, 5)
        assert status == 200
        for i in range(50):  # the attacker knows no key, only the victim's DID
            status, _ = _post(server.url + "/bastion/handshake/hello",
                              {"from": ALICE.did if i % 2 else f"junk-{i}", "challenge": "x"}, 5)
            assert status == 200  # a flood evicts the oldest, it never refuses everyone
        proof = prove(ALICE, hello["challenge"], BOB.did)
        status, reply = _post(server.url + "/bastion/handshake/confirm",
                              {"from": ALICE.did, "challenge": hello["challenge"],
                               "proof": proof}, 5)
        assert status == 200 and reply == {"ok": True}
        status, _ = _post(server.url + "/bastion/handshake/confirm",
                          {"from": MALLORY.did, "challenge": hello["challenge"],
                           "proof": prove(MALLORY, hello["challenge"], BOB.did)}, 5)
        assert status == 403  # single use, and bound to the peer it was issued to
    finally:
        server.stop()
