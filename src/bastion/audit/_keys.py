"""Key files for the audit log: the HMAC key that chains entries and the Ed25519 checkpoint key.

Both files are private to their owner. Creating one is atomic and never overwrites:

1. write the key to a fresh temporary file opened with ``O_CREAT | O_EXCL`` and mode ``0600``,
   then flush and ``fsync`` it;
2. hard-link it to the final name, which fails if that name already exists (another process won
   the race: its key is loaded instead);
3. remove the temporary name.

Loading refuses (``ConfigError``) a file whose mode grants any access to group or others, and a
file that does not hold a key of the expected form.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion._errors import AuditError, ConfigError
from bastion._keyfile import create_private as _create_private
from bastion._keyfile import read_private as _read_private

__all__ = [
    "MAC_KEY_BYTES",
    "StrPath",
    "load_mac_key",
    "load_or_create_mac_key",
    "load_or_create_signing_key",
    "load_signing_key",
    "public_key_id",
    "raw_public_key",
    "resolve_keys",
]

MAC_KEY_BYTES = 32
StrPath = str | os.PathLike[str]


def public_key_id(public_key: Ed25519PublicKey) -> str:
    """``ed25519:`` and the first 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return "ed25519:" + hashlib.sha256(raw_public_key(public_key)).hexdigest()[:16]


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _parse_mac_key(path: Path, text: bytes) -> bytes:
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != MAC_KEY_BYTES:
        raise ConfigError(f"{str(path)!r}: not an audit key ({MAC_KEY_BYTES} bytes in hex)")
    return key


def load_mac_key(path: StrPath) -> bytes:
    """Read an existing MAC key file. ``FileNotFoundError`` if it does not exist."""
    where = Path(path)
    return _parse_mac_key(where, _read_private(where))


def load_or_create_mac_key(path: StrPath) -> bytes:
    """Read the MAC key at ``path``, creating it (32 random bytes, hex, mode 0600) if missing."""
    where = Path(path)
    key = secrets.token_bytes(MAC_KEY_BYTES)
    if _create_private(where, key.hex().encode("ascii") + b"\n"):
        return key
    return load_mac_key(where)


def _parse_signing_key(path: Path, pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{str(path)!r}: not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{str(path)!r}: checkpoint key must be Ed25519")
    return key


def load_signing_key(path: StrPath) -> Ed25519PrivateKey:
    """Read an existing Ed25519 PKCS#8 PEM key file. ``FileNotFoundError`` if it does not exist."""
    where = Path(path)
    return _parse_signing_key(where, _read_private(where))


def load_or_create_signing_key(path: StrPath) -> Ed25519PrivateKey:
    """Read the Ed25519 key at ``path``, creating it (PKCS#8 PEM, mode 0600) if missing."""
    where = Path(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if _create_private(where, pem):
        return key
    return load_signing_key(where)


def resolve_keys(
    db: Path | None,
    *,
    existing: bool,
    key: bytes | None,
    key_path: StrPath | None,
    signing_key: Ed25519PrivateKey | None,
    signing_key_path: StrPath | None,
) -> tuple[bytes, Ed25519PrivateKey]:
    """The MAC and signing keys for the log at ``db`` (``None``: in memory).

    1. An explicit key wins; else its path; else ``<db>.key`` / ``<db>.sign.pem``; else (in
       memory) a fresh key that lives as long as the log.
    2. Key files are created when missing, except the MAC key of an ``existing`` log: a new one
       could never verify the chain, so its absence is an ``AuditError``.
    """
    if key is not None:
        if len(key) < 16:
            raise ConfigError("audit option 'key' must be at least 16 bytes")
        mac_key = key
    else:
        where = key_path or (db and f"{db}.key")
        if not where:
            mac_key = secrets.token_bytes(MAC_KEY_BYTES)
        elif not existing:
            mac_key = load_or_create_mac_key(where)
        else:
            try:
                mac_key = load_mac_key(where)
            except FileNotFoundError:
                raise AuditError(
                    f"{os.fspath(where)!r}: the mac key of this existing audit log is missing"
                ) from None
    if signing_key is None:
        sign_path = signing_key_path or (db and f"{db}.sign.pem")
        signing_key = (
            load_or_create_signing_key(sign_path) if sign_path else Ed25519PrivateKey.generate()
        )
    return mac_key, signing_key
