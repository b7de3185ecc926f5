"""Signed envelopes: round trip, tampering, replay, recipient and staleness."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mesh_fixtures import NOW, ident

from bastion.mesh import EnvelopeError, SQLiteMeshStore, open_envelope, open_mesh_store, seal

ALICE, BOB, CAROL = ident(2), ident(3), ident(4)


def test_round_trip(store: SQLiteMeshStore) -> None:
    wire = seal(ALICE, BOB.did, b'{"task": "summarise"}', now=NOW)
    opened = open_envelope(wire, recipient=BOB.did, nonces=store, now=NOW + 1)
    assert opened.sender == ALICE.did and opened.body == b'{"task": "summarise"}'


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_changed_byte_fails(data: st.DataObject) -> None:
    store = open_mesh_store(None)
    wire = seal(ALICE, BOB.did, b"pay 10 to carol", now=NOW)
    i = data.draw(st.integers(0, len(wire) - 1))
    b = data.draw(st.integers(0, 255))
    if b == wire[i]:
        return
    tampered = wire[:i] + bytes([b]) + wire[i + 1:]
    with pytest.raises(EnvelopeError):
        open_envelope(tampered, recipient=BOB.did, nonces=store, now=NOW)
    store.close()


@settings(max_examples=30, deadline=None)
@given(body=st.binary(max_size=64), delay=st.floats(0, 29))
def test_replay_is_refused(body: bytes, delay: float) -> None:
    store = open_mesh_store(None)
    wire = seal(ALICE, BOB.did, body, now=NOW)
    open_envelope(wire, recipient=BOB.did, nonces=store, now=NOW)
    with pytest.raises(EnvelopeError) as err:
        open_envelope(wire, recipient=BOB.did, nonces=store, now=NOW + delay)
    assert err.value.reason == "replay"
    store.close()


def test_replay_across_processes_shares_the_nonce_store(tmp_path: Path) -> None:
    one, two = open_mesh_store(tmp_path / "n.db"), open_mesh_store(tmp_path / "n.db")
    wire = seal(ALICE, BOB.did, b"x", now=NOW)
    open_envelope(wire, recipient=BOB.did, nonces=one, now=NOW)
    with pytest.raises(EnvelopeError, match="replay"):
        open_envelope(wire, recipient=BOB.did, nonces=two, now=NOW + 5)
    one.close()
    two.close()


def test_stale_wrong_recipient_and_rejected_sender(store: SQLiteMeshStore) -> None:
    wire = seal(ALICE, CAROL.did, b"x", now=NOW)
    with pytest.raises(EnvelopeError) as err:
        open_envelope(wire, recipient=BOB.did, nonces=store, now=NOW)
    assert err.value.reason == "recipient"
    old = seal(ALICE, BOB.did, b"x", now=NOW - 31)
    with pytest.raises(EnvelopeError) as err:
        open_envelope(old, recipient=BOB.did, nonces=store, now=NOW, skew_s=30)
    assert err.value.reason == "stale"
    future = seal(ALICE, BOB.did, b"x", now=NOW + 31)
    with pytest.raises(EnvelopeError, match="stale"):
        open_envelope(future, recipient=BOB.did, nonces=store, now=NOW, skew_s=30)
    fine = seal(ALICE, BOB.did, b"x", now=NOW)
    with pytest.raises(EnvelopeError) as err:
        open_envelope(fine, recipient=BOB.did, nonces=store, now=NOW,
                      accept_sender=lambda did: False)
    assert err.value.reason == "unknown_key"
    # the refused envelope burnt no nonce: it opens once accepted
    open_envelope(fine, recipient=BOB.did, nonces=store, now=NOW)


def test_nonces_expire_after_the_skew_window(store: SQLiteMeshStore) -> None:
    a = seal(ALICE, BOB.did, b"1", now=NOW, nonce="a1")
    open_envelope(a, recipient=BOB.did, nonces=store, now=NOW)
    from bastion.mesh._envelope import MAX_SKEW_S

    later = seal(ALICE, BOB.did, b"2", now=NOW + 100, nonce="a1")
    with pytest.raises(EnvelopeError, match="replay"):  # held for the widest allowed window,
        open_envelope(later, recipient=BOB.did, nonces=store, now=NOW + 100, skew_s=600)
    # ... a receiver with a wider window cannot be replayed into; it is held twice the widest
    # window (a pruning process's clock may run ahead by as much), then purged
    t = NOW + 2 * MAX_SKEW_S + 1
    b = seal(ALICE, BOB.did, b"3", now=t, nonce="a1")  # same nonce, after every window
    open_envelope(b, recipient=BOB.did, nonces=store, now=t)
    rows = store._read("select count(*) from nonces", ())
    assert rows[0][0] == 1  # the expired entry was purged
