"""Key files: created atomically with mode 0600, reloaded unchanged, refused when exposed."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion._errors import ConfigError
from bastion.audit import load_or_create_mac_key, load_or_create_signing_key, public_key_id
from bastion.audit._keys import load_mac_key, raw_public_key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_mac_key_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "a.db.key"
    key = load_or_create_mac_key(path)
    assert len(key) == 32
    assert mode(path) == 0o600
    assert path.read_text().strip() == key.hex()
    assert load_or_create_mac_key(path) == key
    assert load_mac_key(str(path)) == key
    assert os.listdir(tmp_path) == ["a.db.key"]  # no temporary file left behind


def test_mac_keys_are_random(tmp_path: Path) -> None:
    assert load_or_create_mac_key(tmp_path / "a") != load_or_create_mac_key(tmp_path / "b")


def test_concurrent_creation_agrees_on_one_key(tmp_path: Path) -> None:
    path = tmp_path / "race.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_or_create_mac_key(path)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert sorted(os.listdir(tmp_path)) == ["race.key"]


@pytest.mark.parametrize("perms", [0o640, 0o604, 0o644, 0o660])
def test_exposed_key_file_is_refused(tmp_path: Path, perms: int) -> None:
    path = tmp_path / "k"
    load_or_create_mac_key(path)
    path.chmod(perms)
    with pytest.raises(ConfigError, match="must be 0600"):
        load_or_create_mac_key(path)


def test_malformed_mac_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not hex at all")
    os.close(fd)
    with pytest.raises(ConfigError, match="not an audit key"):
        load_mac_key(path)


def test_signing_key_is_pkcs8_pem_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "a.db.sign.pem"
    key = load_or_create_signing_key(path)
    assert mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_or_create_signing_key(path)
    assert raw_public_key(again.public_key()) == raw_public_key(key.public_key())
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="must be 0600"):
        load_or_create_signing_key(path)


def test_signing_key_file_must_hold_ed25519(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    os.close(fd)
    with pytest.raises(ConfigError, match="PEM private key"):
        load_or_create_signing_key(path)


def test_public_key_id_is_stable_and_distinct() -> None:
    a = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32).public_key()
    b = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32).public_key()
    assert public_key_id(a) == public_key_id(a)
    assert public_key_id(a) != public_key_id(b)
    assert public_key_id(a).startswith("ed25519:") and len(public_key_id(a)) == 8 + 16
