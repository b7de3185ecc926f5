"""Releasing the kill switch with ``release_keys``: only a fresh, single-use proof signed by the
releaser's key for exactly that scope and reason releases it; every refusal is audited."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion import ConfigError
from bastion.audit import AuditLog, read_events
from bastion.mesh import Identity
from bastion.runtime import KillSwitch, release_proof
from bastion.state import open_store

BASTION = Path(sys.executable).with_name("bastion")
NOW = 1_800_000_000


@pytest.fixture
def env(tmp_path: Path) -> tuple[KillSwitch, Ed25519PrivateKey, Path]:
    alice = Ed25519PrivateKey.generate()
    log = AuditLog.open(tmp_path / "audit.db", durable=True)
    switch = KillSwitch(open_store(tmp_path / "state.db"), audit=log,
                        release_keys={"alice": alice.public_key()},
                        clock=lambda: NOW * 1_000_000_000)
    switch.engage(by="oncall", reason="runaway", agent="bot-1")
    return switch, alice, tmp_path / "audit.db"


def _proof(key: Ed25519PrivateKey, **kw: object) -> str:
    args: dict[str, object] = {"by": "alice", "reason": "fixed", "agent": "bot-1", "now": NOW,
                               **kw}
    return release_proof(key, **args)  # type: ignore[arg-type]


def _refused(switch: KillSwitch, proof: str | None, match: str, **kw: object) -> None:
    args: dict[str, object] = {"by": "alice", "reason": "fixed", "agent": "bot-1", **kw}
    with pytest.raises(ConfigError, match=match):
        switch.release(proof=proof, **args)  # type: ignore[arg-type]
    assert "kill:agent:bot-1" in switch.engaged()


def test_a_valid_proof_releases_once(env: tuple[KillSwitch, Ed25519PrivateKey, Path]) -> None:
    switch, alice, audit = env
    proof = _proof(alice)
    assert switch.release(by="alice", reason="fixed", agent="bot-1", proof=proof)
    assert switch.engaged() == {}
    switch.engage(by="oncall", agent="bot-1")
    _refused(switch, proof, "already used")
    kinds = [e["kind"] for e in read_events(audit) if e["kind"].startswith("kill.")]
    assert kinds == ["kill.engage", "kill.release", "kill.engage", "kill.release_refused"]


def test_a_missing_forged_or_misdirected_proof_is_refused(
        env: tuple[KillSwitch, Ed25519PrivateKey, Path]) -> None:
    switch, alice, audit = env
    mallory = Ed25519PrivateKey.generate()
    _refused(switch, None, "proof is required")
    _refused(switch, _proof(mallory), "does not verify")
    _refused(switch, _proof(alice, agent="bot-2"), "does not verify")  # another scope
    _refused(switch, _proof(alice, reason="other"), "does not verify")  # another reason
    _refused(switch, _proof(alice, by="bob"), "holds no release key", by="bob")
    _refused(switch, "not-a-proof", "does not verify")
    good = _proof(alice)
    ts, sig = good.split(".")
    _refused(switch, f"{int(ts) + 1}.{sig}", "does not verify")  # timestamp edited
    _refused(switch, _proof(alice, now=NOW - 301), "stale")
    _refused(switch, _proof(alice, now=NOW + 301), "stale")
    refusals = [e for e in read_events(audit) if e["kind"] == "kill.release_refused"]
    assert len(refusals) == 9 and all(e["problem"] for e in refusals)


def test_release_keys_accept_a_did_key(tmp_path: Path) -> None:
    ident = Identity.generate()
    switch = KillSwitch(open_store(None), audit=AuditLog.open(None),
                        release_keys={"Alice": ident.did})
    switch.engage(by="oncall", everything=True)
    proof = release_proof(ident.private_key, by="Alice", everything=True)
    assert switch.release(by="alice", everything=True, proof=proof)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BASTION), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_cli_signed_release(tmp_path: Path) -> None:
    state, audit, key = str(tmp_path / "s.db"), str(tmp_path / "a.db"), tmp_path / "alice.key"
    created = _cli("id", "new", "--key", str(key))
    assert created.returncode == 0, created.stderr
    did = json.loads(created.stdout.strip().splitlines()[-1])["did"]
    keys = tmp_path / "release-keys.yaml"
    keys.write_text(f"alice: {did}\n")
    from bastion.state import open_store

    open_store(state).close()  # the fleet's store (the kernel makes it; kill refuses a typo)
    assert _cli("kill", "--state", state, "--by", "oncall", "--all").returncode == 0
    common = ("release", "--state", state, "--audit", audit, "--by", "alice", "--all")
    unsigned = _cli(*common, "--release-keys", str(keys))
    assert unsigned.returncode == 2 and "needs both --release-keys and --key" in unsigned.stderr
    other = tmp_path / "bob.key"
    assert _cli("id", "new", "--key", str(other)).returncode == 0
    forged = _cli(*common, "--release-keys", str(keys), "--key", str(other))
    assert forged.returncode == 2 and "does not verify" in forged.stderr
    ok = _cli(*common, "--release-keys", str(keys), "--key", str(key))
    assert ok.returncode == 0 and ok.stdout.strip() == "released"
    time.sleep(0)  # the refusal and the release are both in the log
    kinds = [e["kind"] for e in read_events(audit)]
    assert kinds.count("kill.release_refused") == 1 and kinds.count("kill.release") == 1
