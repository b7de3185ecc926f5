"""Constants and helpers shared by the mesh tests (a uniquely named module: ``conftest`` is
ambiguous when several test folders have one)."""

from __future__ import annotations

from typing import Any

from bastion.mesh import Identity

NOW = 1_750_000_000.0


def ident(n: int) -> Identity:
    """A deterministic identity: seed = 31 zero bytes and ``n``."""
    return Identity.from_seed(bytes(31) + bytes([n]))


# -- store backends (test_store_backends.py) -------------------------------------------------
# Process entry points live here, in an importable module, so that ``spawn`` children find them.

POSTGRES_ENV = "BASTION_TEST_POSTGRES"


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``schema=`` added to its query string."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def claim_worker(url: str, nonces: list[str], barrier: Any, results: Any) -> None:
    """Open the store at ``url``, wait for every racer, claim each nonce once; report wins."""
    from bastion.mesh import open_mesh_store

    store = open_mesh_store(url)
    try:
        barrier.wait(timeout=60)
        won = [n for n in nonces if store.claim_nonce("race", n, expires=NOW + 60, now=NOW)]
        results.put(won)
    finally:
        store.close()


def register_worker(url: str, n: int, barrier: Any, results: Any) -> None:
    """Race to register agent ``racer`` with key ``ident(n)``; report ``ok`` or the error type."""
    from bastion.mesh import RegistryError, open_mesh_store

    store = open_mesh_store(url)
    try:
        barrier.wait(timeout=60)
        try:
            store.register("racer", ident(n).did, now=NOW)
            results.put("ok")
        except RegistryError:
            results.put("RegistryError")
        except Exception as exc:  # reported, so the test names what went wrong
            results.put(f"{type(exc).__name__}: {exc}")
    finally:
        store.close()


def revoke_worker(url: str, token_id: str, agent_id: str) -> None:
    """In another process: revoke one token link and one agent."""
    from bastion.mesh import open_mesh_store

    store = open_mesh_store(url)
    try:
        store.revoke(token_id, reason="compromised", now=NOW)
        store.revoke_agent(agent_id)
    finally:
        store.close()
