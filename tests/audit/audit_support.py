"""Shared test data for the audit tests: fixed keys (no key files) and event bodies."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAC_KEY = bytes(range(32))
SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def event(i: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "decision", "id": f"d{i}", "ts": 1_700_000_000_000_000_000 + i, **extra}
