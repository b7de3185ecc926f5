"""Identities: known answers for did:key and Ed25519, key files, rotation and the registry."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion._errors import ConfigError
from bastion.mesh import (
    Identity,
    RegistryError,
    SQLiteMeshStore,
    VerificationError,
    did_from_public,
    public_from_did,
    rotation_statement,
)
from bastion.mesh._keys import b58decode, b58encode, raw_public, verify_signature

# W3C CCG did:key test vectors (test-vectors/ed25519-x25519.json): seed -> DID, publicKeyBase58
DID_KEY_VECTORS = [
    ("00" * 32, "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
     "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS"),
    ("00" * 31 + "01", "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG",
     "6ASf5EcmmEHTgDJ4X4ZT5vT6iHVJBXPg5AN5YoTCpGWt"),
    ("00" * 31 + "02", "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf",
     "8pM1DN3RiT8vbom5u1sNryaNT1nyL8CTTW3b5PwWXRBH"),
    ("00" * 31 + "03", "did:key:z6MkvqoYXQfDDJRv8L4wKzxYeuKyVZBfi9Qo6Ro8MiLH3kDQ",
     "HPYVwAQmskwT1qEEeRzhoomyfyupJGASQQtCXSNG8XS2"),
    ("00" * 31 + "04", "did:key:z6MkwW6aqMnjgrhJXFUko3NnZPGzVpkNzhYK7yEhnsibmLwL",
     "J3qYF7YJMKCqQke47UQwiHizgFUXapHxRxKmxbkar89x"),
]


@pytest.mark.parametrize(("seed", "did", "pub58"), DID_KEY_VECTORS)
def test_did_key_known_answers(seed: str, did: str, pub58: str) -> None:
    identity = Identity.from_seed(bytes.fromhex(seed))
    assert identity.did == did
    assert b58encode(raw_public(identity.private_key.public_key())) == pub58
    assert raw_public(public_from_did(did)) == b58decode(pub58)


def test_ed25519_rfc8032_test_1() -> None:
    """RFC 8032 section 7.1, TEST 1 (empty message): the library signs as the RFC says."""
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    key = Identity.from_seed(seed).private_key
    assert raw_public(key.public_key()).hex() == \
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert key.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e3970"
        "1cf9b46bd25bf5f0595bbe24655141438e7a100b")


def test_domain_separation() -> None:
    me = Identity.from_seed(bytes(32))
    sig = me.sign("bastion-token-v1", b"m")
    verify_signature(me.did, "bastion-token-v1", b"m", sig)
    with pytest.raises(VerificationError, match="signature"):
        verify_signature(me.did, "bastion-envelope-v1", b"m", sig)


@given(st.binary(max_size=40))
def test_base58_round_trip(data: bytes) -> None:
    assert b58decode(b58encode(data)) == data


@pytest.mark.parametrize("bad", ["did:key:zQ3s", "did:web:example.com", "did:key:z0OIl",
                                 "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWq1",
                                 "did:key:z" + b58encode(b"\xe7\x01" + bytes(33))])
def test_malformed_dids_are_refused(bad: str) -> None:
    with pytest.raises(VerificationError):
        public_from_did(bad)


def test_key_file_is_0600_atomic_and_never_overwritten(tmp_path: Path) -> None:
    me = Identity.generate()
    path = me.save(tmp_path / "agent.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).did == me.did
    assert "PRIVATE" not in repr(me) and me.did in repr(me)
    with pytest.raises(ConfigError, match="already exists"):
        Identity.generate().save(path)
    assert Identity.load(path).did == me.did
    assert [p.name for p in tmp_path.iterdir()] == ["agent.key"]  # no temporary left behind


def test_loose_key_file_is_refused(tmp_path: Path) -> None:
    path = Identity.generate().save(tmp_path / "k")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="0600"):
        Identity.load(path)


def test_rotation_needs_the_old_key(store: SQLiteMeshStore) -> None:
    old, new, thief = Identity.generate(), Identity.generate(), Identity.generate()
    store.register("agent-1", old.did, roles=["payer"], now=1.0)
    forged = rotation_statement(thief, new, agent_id="agent-1", at=2)
    with pytest.raises(RegistryError, match="not for agent"):
        store.rotate("agent-1", forged, now=2.0)
    tampered = {**rotation_statement(old, new, agent_id="agent-1", at=2), "new": thief.did}
    with pytest.raises(RegistryError, match="signature"):
        store.rotate("agent-1", tampered, now=2.0)
    record = store.rotate("agent-1", rotation_statement(old, new, agent_id="agent-1", at=2),
                          now=2.0)
    assert record.did == new.did and record.roles == ("payer",)
    assert store.is_current_key(new.did) and not store.is_current_key(old.did)
    assert store.by_did(old.did) is not None  # history kept
    with pytest.raises(RegistryError):  # the retired key cannot hand over again
        store.rotate("agent-1", rotation_statement(old, thief, agent_id="agent-1", at=3),
                     now=3.0)


def test_registry_refuses_duplicates_and_tracks_revocation(store: SQLiteMeshStore) -> None:
    a = Identity.generate()
    store.register("a", a.did, now=1.0)
    with pytest.raises(RegistryError):
        store.register("a", Identity.generate().did, now=1.0)
    with pytest.raises(RegistryError):
        store.register("b", a.did, now=1.0)
    with pytest.raises(VerificationError):
        store.register("c", "did:key:nope", now=1.0)
    store.revoke_agent("a")
    record = store.get("a")
    assert record is not None and not record.active and not store.is_current_key(a.did)
    assert did_from_public(a.private_key.public_key()) == a.did
