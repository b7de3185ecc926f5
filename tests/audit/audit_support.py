"""Shared test data for the audit tests: fixed keys (no key files) and event bodies."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import bastion
from bastion.audit import AuditLog

MAC_KEY = bytes(range(32))
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def event(i: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "decision", "id": f"d{i}", "ts": 1_700_000_000_000_000_000 + i, **extra}


def build(db: Path, ids: Iterable[int], *, every: int = 5,
          signing_key: Ed25519PrivateKey = SIGNING_KEY) -> None:
    """A log at ``db`` holding ``event(i)`` for each id, checkpointed every ``every`` entries."""
    with AuditLog.open(db, key=MAC_KEY, signing_key=signing_key, durable=True,
                       checkpoint_every=every) as log:
        for i in ids:
            log.append(event(i))


def pay(args: Any) -> bastion.Action:
    """A pre_tool call of ``pay`` by agent-1 in session s1."""
    return bastion.Action(tool="pay", args=args, stage="pre_tool", agent={"id": "agent-1"},
                          session={"id": "s1"})
