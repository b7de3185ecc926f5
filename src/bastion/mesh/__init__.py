"""Agent mesh: identities (``did:key``), capability tokens that only narrow, trust earned from
recorded evidence, signed envelopes and a key-possession handshake. Re-exports only."""

from bastion.mesh._attest import (
    make_attestation,
    record_attestation,
    record_slo_breach,
    verify_attestation,
)
from bastion.mesh._cards import card_payload, sign_card, verify_card
from bastion.mesh._envelope import Opened, open_envelope, seal
from bastion.mesh._errors import (
    EnvelopeError,
    HandshakeError,
    MeshError,
    RegistryError,
    TokenError,
    VerificationError,
)
from bastion.mesh._facts import UNTRUSTED, TrustFacts
from bastion.mesh._guard import TokenGuard, prove_call
from bastion.mesh._handshake import (
    Admission,
    HandshakeServer,
    PeerCache,
    handshake,
    unsafe_admit_any,
)
from bastion.mesh._keys import (
    Identity,
    did_from_public,
    public_from_did,
    rotation_statement,
    verify_rotation,
)
from bastion.mesh._store import (
    AgentRecord,
    AgentRegistry,
    MeshStore,
    NonceStore,
    RevocationList,
    SQLiteMeshStore,
    open_mesh_store,
)
from bastion.mesh._tokens import (
    Token,
    VerifiedToken,
    delegate_token,
    issue_token,
    parse_token,
    verify_token,
)
from bastion.mesh._trust import TIERS, Contribution, TrustConfig, TrustEngine, TrustReport, tier_of

__all__ = [
    "TIERS",
    "UNTRUSTED",
    "Admission",
    "AgentRecord",
    "AgentRegistry",
    "Contribution",
    "EnvelopeError",
    "HandshakeError",
    "HandshakeServer",
    "Identity",
    "MeshError",
    "MeshStore",
    "NonceStore",
    "Opened",
    "PeerCache",
    "RegistryError",
    "RevocationList",
    "SQLiteMeshStore",
    "Token",
    "TokenError",
    "TokenGuard",
    "TrustConfig",
    "TrustEngine",
    "TrustFacts",
    "TrustReport",
    "VerificationError",
    "VerifiedToken",
    "card_payload",
    "delegate_token",
    "did_from_public",
    "handshake",
    "issue_token",
    "make_attestation",
    "open_envelope",
    "open_mesh_store",
    "parse_token",
    "prove_call",
    "public_from_did",
    "record_attestation",
    "record_slo_breach",
    "rotation_statement",
    "seal",
    "sign_card",
    "tier_of",
    "unsafe_admit_any",
    "verify_attestation",
    "verify_card",
    "verify_rotation",
    "verify_token",
]
