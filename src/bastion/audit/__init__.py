"""Tamper-evident audit log: an HMAC chain of canonical JSON entries in SQLite, with signed
RFC 6962 Merkle checkpoints, inclusion and consistency proofs. Re-exports only."""

from bastion.audit._keys import (
    load_or_create_mac_key,
    load_or_create_signing_key,
    public_key_id,
)
from bastion.audit._log import AuditLog, AuditStats
from bastion.audit._proofs import (
    check_checkpoint,
    check_consistency,
    check_inclusion,
    latest_checkpoint,
    prove_consistency,
    prove_inclusion,
)
from bastion.audit._store import AuditTarget
from bastion.audit._verify import AuditSource, VerifyReport, read_events, verify, verify_tail

__all__ = [
    "AuditLog",
    "AuditSource",
    "AuditStats",
    "AuditTarget",
    "VerifyReport",
    "check_checkpoint",
    "check_consistency",
    "check_inclusion",
    "latest_checkpoint",
    "load_or_create_mac_key",
    "load_or_create_signing_key",
    "prove_consistency",
    "prove_inclusion",
    "public_key_id",
    "read_events",
    "verify",
    "verify_tail",
]
