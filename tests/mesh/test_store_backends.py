"""The mesh store's contract on every backend: SQLite always; PostgreSQL when the environment
variable ``BASTION_TEST_POSTGRES`` names a server (else those cases skip and say why).

Each PostgreSQL case runs in a schema of its own, dropped afterwards. The ``store`` fixture here
overrides conftest's SQLite-only one, and the existing tests that take a ``store`` are imported
below so that they run again on every backend.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_mesh_envelope
import test_mesh_guard_trust
import test_mesh_handshake
import test_mesh_keys
import test_mesh_tokens
from mesh_fixtures import (
    NOW,
    POSTGRES_ENV,
    claim_worker,
    ident,
    register_worker,
    revoke_worker,
    with_schema,
)

from bastion import ConfigError, StateError
from bastion.mesh import RegistryError, TokenError, issue_token, open_mesh_store, verify_token
from bastion.mesh._store import MeshStore

PG_URL = os.environ.get(POSTGRES_ENV)
NO_PG = (f"{POSTGRES_ENV} is not set: the PostgreSQL mesh store is not tested "
         f"(e.g. {POSTGRES_ENV}=postgresql://postgres@127.0.0.1:5432/test)")
SPAWN = multiprocessing.get_context("spawn")

# The existing store tests, once more on every backend (same functions, this module's fixture).
test_round_trip = test_mesh_envelope.test_round_trip
test_stale_wrong_recipient_and_rejected_sender = (
    test_mesh_envelope.test_stale_wrong_recipient_and_rejected_sender)
test_nonces_expire_after_the_skew_window = (
    test_mesh_envelope.test_nonces_expire_after_the_skew_window)
test_rotation_needs_the_old_key = test_mesh_keys.test_rotation_needs_the_old_key
test_registry_refuses_duplicates_and_tracks_revocation = (
    test_mesh_keys.test_registry_refuses_duplicates_and_tracks_revocation)
test_attack_revoked_ancestor_revokes_descendants = (
    test_mesh_tokens.test_attack_revoked_ancestor_revokes_descendants)
test_cache_holds_only_while_peer_stays_admitted = (
    test_mesh_handshake.test_cache_holds_only_while_peer_stays_admitted)
test_guard_enforces_presented_token = test_mesh_guard_trust.test_guard_enforces_presented_token
test_trust_facts_reach_cel_and_flooding_cannot_inflate = (
    test_mesh_guard_trust.test_trust_facts_reach_cel_and_flooding_cannot_inflate)
test_attestations_count_only_when_signed_by_another_registered_identity = (
    test_mesh_guard_trust.test_attestations_count_only_when_signed_by_another_registered_identity)
test_attestation_flooding_and_retired_keys_do_not_count = (
    test_mesh_guard_trust.test_attestation_flooding_and_retired_keys_do_not_count)


@pytest.fixture(scope="module")
def pg_admin() -> Iterator[object]:
    """An autocommit connection to ``BASTION_TEST_POSTGRES`` that creates and drops schemas."""
    if not PG_URL:
        pytest.skip(NO_PG)
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (extra 'postgres')")
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        yield conn


@pytest.fixture
def pg_url(pg_admin: object) -> Iterator[str]:
    """``BASTION_TEST_POSTGRES`` with a fresh schema, dropped after the test."""
    from psycopg import sql

    schema = f"bastion_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    assert PG_URL is not None
    yield with_schema(PG_URL, schema)
    pg_admin.execute(  # type: ignore[attr-defined]
        sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mesh.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[MeshStore]:
    s = open_mesh_store(store_url)
    yield s
    s.close()


# -- the contract ---------------------------------------------------------------------------

def test_schema_is_created_on_first_use_and_reopening_keeps_the_data(store_url: str) -> None:
    first = open_mesh_store(store_url)
    first.register("a", ident(2).did, roles=["payer", "payer", "auditor"], now=NOW + 0.123456)
    first.close()
    again = open_mesh_store(store_url)  # the schema statements run again, harmlessly
    record = again.get("a")
    assert record is not None and record.roles == ("auditor", "payer")
    assert record.created == NOW + 0.123456  # 8-byte floats on both backends
    again.close()


def test_registry_reads(store: MeshStore) -> None:
    assert store.get("nobody") is None and store.by_did(ident(9).did) is None
    for n, agent in enumerate(["b", "B", "a", "é", "a-1"], start=2):
        store.register(agent, ident(n).did, now=NOW)
    assert [r.agent_id for r in store.agents()] == ["B", "a", "a-1", "b", "é"]  # code points
    assert store.by_did(ident(2).did) == store.get("b")
    with pytest.raises(RegistryError, match="not registered"):
        store.revoke_agent("nobody")
    with pytest.raises(RegistryError, match="non-empty"):
        store.register("", ident(9).did, now=NOW)


def test_revocations_are_idempotent_and_checked_in_chain_order(store: MeshStore) -> None:
    assert store.first_revoked([]) is None
    store.revoke("t2", reason="compromised", now=NOW)
    store.revoke("t2", now=NOW + 1)  # again: no error, no change
    store.revoke("t1", now=NOW)
    assert store.first_revoked(["t0", "t2", "t1"]) == "t2"
    assert store.first_revoked(["t0", "t3"]) is None
    assert store._read("select reason, at from revoked where id=?", ("t2",)) == [
        ("compromised", NOW)]


def test_nonces_are_per_scope_and_reusable_only_after_expiry(store: MeshStore) -> None:
    assert store.claim_nonce("a", "n", expires=NOW + 10, now=NOW)
    assert not store.claim_nonce("a", "n", expires=NOW + 99, now=NOW + 10)  # held until expiry
    assert store.claim_nonce("b", "n", expires=NOW + 10, now=NOW)  # another scope
    assert store.claim_nonce("a", "other", expires=NOW + 100, now=NOW)
    assert store.claim_nonce("a", "n", expires=NOW + 30, now=NOW + 11)  # expired, claimable
    rows = store._read("select scope, nonce from nonces order by scope, nonce", ())
    assert [tuple(r) for r in rows] == [("a", "n"), ("a", "other")]  # ("b", "n") was pruned


def test_a_closed_store_fails_closed(store_url: str) -> None:
    store = open_mesh_store(store_url)
    store.close()
    with pytest.raises(StateError):
        store.claim_nonce("a", "n", expires=NOW + 10, now=NOW)


# -- several processes ----------------------------------------------------------------------

def _run(target: object, args_for: list[tuple[object, ...]]) -> None:
    procs = [SPAWN.Process(target=target, args=args) for args in args_for]  # type: ignore[attr-defined]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0, f"worker exited with {p.exitcode}"


def test_racing_processes_exactly_one_claims_each_nonce(store_url: str) -> None:
    open_mesh_store(store_url).close()  # schema in place before the race (the race is on nonces)
    n, nonces = 4, [f"n{i}" for i in range(25)]
    barrier, results = SPAWN.Barrier(n), SPAWN.Queue()
    _run(claim_worker, [(store_url, nonces, barrier, results)] * n)
    won = [nonce for _ in range(n) for nonce in results.get(timeout=30)]
    assert sorted(won) == sorted(nonces)  # each nonce accepted by exactly one process


def test_racing_processes_exactly_one_registers_an_agent(store_url: str) -> None:
    n = 3
    barrier, results = SPAWN.Barrier(n), SPAWN.Queue()
    _run(register_worker, [(store_url, 10 + i, barrier, results) for i in range(n)])
    outcomes = sorted(results.get(timeout=30) for _ in range(n))
    assert outcomes == ["RegistryError"] * (n - 1) + ["ok"]


def test_a_revocation_written_by_one_process_is_seen_by_another(store_url: str) -> None:
    root, alice = ident(1), ident(2)
    store = open_mesh_store(store_url)
    store.register("alice", alice.did, now=NOW)
    token = issue_token(root, audience=alice.did, scopes=["tool:*"], now=NOW)
    verify_token(token.encode(), roots={root.did}, now=NOW, revocations=store)
    assert store.is_current_key(alice.did)
    _run(revoke_worker, [(store_url, token.id, "alice")])
    with pytest.raises(TokenError) as err:  # the same open store, no reopening
        verify_token(token.encode(), roots={root.did}, now=NOW, revocations=store)
    assert err.value.reason == "revoked"
    record = store.get("alice")
    assert record is not None and not record.active and not store.is_current_key(alice.did)
    store.close()


def test_postgres_a_dropped_connection_fails_one_call_then_reconnects(
        pg_url: str, pg_admin: object) -> None:
    store = open_mesh_store(pg_url)
    pid = store._read("select pg_backend_pid()", ())[0][0]
    pg_admin.execute("select pg_terminate_backend(%s)", (pid,))  # type: ignore[attr-defined]
    with pytest.raises(StateError, match="mesh store failed"):  # fail closed, no silent retry
        store.claim_nonce("a", "n", expires=NOW + 10, now=NOW)
    assert store.claim_nonce("a", "n", expires=NOW + 10, now=NOW)  # the next call reconnects
    assert not store.claim_nonce("a", "n", expires=NOW + 10, now=NOW)
    store.close()


# -- opening by URL -------------------------------------------------------------------------

def test_postgres_without_psycopg_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # "import psycopg" now fails
    with pytest.raises(ConfigError, match=r"psycopg .*bastion\[postgres\]"):
        open_mesh_store("postgresql://u@127.0.0.1:5432/db")
    with pytest.raises(ConfigError, match="not available"):
        open_mesh_store("redis://127.0.0.1:6379/0")


def test_postgres_url_errors_name_the_url_without_its_password() -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed (extra 'postgres')")
    with pytest.raises(ConfigError, match="schema 'Bad-Name'"):
        open_mesh_store("postgresql://u@127.0.0.1:5432/db?schema=Bad-Name")
    with pytest.raises(StateError) as err:  # nothing listens on port 1
        open_mesh_store("postgresql://u:s3cret@127.0.0.1:1/db?connect_timeout=5&password=p4ss")
    assert "s3cret" not in str(err.value) and "p4ss" not in str(err.value)
    assert "postgresql://u:***@127.0.0.1:1/db" in str(err.value)


def test_importing_bastion_does_not_import_psycopg() -> None:
    code = ("import sys, bastion, bastion.mesh, bastion.cli; "
            "sys.exit('psycopg' in sys.modules or 'bastion.mesh._store_pg' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
