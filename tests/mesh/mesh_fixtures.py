"""Constants and helpers shared by the mesh tests (a uniquely named module: ``conftest`` is
ambiguous when several test folders have one)."""

from __future__ import annotations

from bastion.mesh import Identity

NOW = 1_750_000_000.0


def ident(n: int) -> Identity:
    """A deterministic identity: seed = 31 zero bytes and ``n``."""
    return Identity.from_seed(bytes(31) + bytes([n]))
