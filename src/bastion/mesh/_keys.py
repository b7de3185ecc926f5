"""Identities: Ed25519 keys, ``did:key`` identifiers, key files and key rotation.

A ``did:key`` for Ed25519 is ``did:key:z`` + base58btc(``0xed 0x01`` + the 32-byte public key)
(W3C CCG did:key method; ``0xed01`` is the varint of the ``ed25519-pub`` multicodec). The DID
*is* the public key: anyone can verify a signature against a DID without a lookup.

Every signature made here is over ``domain || 0x00 || message`` where ``domain`` names what is
being signed (``bastion-token-v1``, ``bastion-envelope-v1``, ...), so a signature made for one
purpose can never be replayed as another.

Key files hold the raw 32-byte private seed in PKCS#8 PEM. Writing one:

1. create a fresh temporary file beside the target with ``O_CREAT | O_EXCL`` and mode ``0600``;
2. write, flush and ``fsync`` it;
3. hard-link it to the final name (fails if that name exists: a key is never overwritten);
4. remove the temporary name.

Loading refuses a file whose mode grants any access to group or others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion._canon import canonical_json
from bastion._errors import ConfigError
from bastion._keyfile import create_private, read_private
from bastion.mesh._errors import RegistryError, VerificationError

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
_ED25519_PUB = b"\xed\x01"
DID_PREFIX = "did:key:z"


def b58encode(data: bytes) -> str:
    """base58btc (Bitcoin alphabet); leading zero bytes become ``1``."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Inverse of ``b58encode``; ``ValueError`` on a character outside the alphabet."""
    n = 0
    for ch in text:
        if ch not in _B58_INDEX:
            raise ValueError(f"invalid base58 character {ch!r}")
        n = n * 58 + _B58_INDEX[ch]
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def did_from_public(key: Ed25519PublicKey | bytes) -> str:
    """The ``did:key`` of an Ed25519 public key (object or 32 raw bytes)."""
    raw = key if isinstance(key, bytes) else raw_public(key)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return DID_PREFIX + b58encode(_ED25519_PUB + raw)


@lru_cache(maxsize=4096)  # a DID always names the same key; decoding it is the slow part
def public_from_did(did: str) -> Ed25519PublicKey:
    """The public key a ``did:key`` names. ``VerificationError('unknown_key')`` when ``did`` is
    not an Ed25519 ``did:key`` (other multicodecs, bad base58, wrong length)."""
    if not isinstance(did, str) or not did.startswith(DID_PREFIX) or len(did) > 64:
        raise VerificationError("unknown_key", f"{did!r} is not an ed25519 did:key")
    try:
        data = b58decode(did[len(DID_PREFIX):])
    except ValueError as exc:
        raise VerificationError("unknown_key", f"{did!r}: {exc}") from None
    if len(data) != 34 or data[:2] != _ED25519_PUB or did_from_public(data[2:]) != did:
        raise VerificationError("unknown_key", f"{did!r} is not an ed25519 did:key")
    if _weak(data[2:]):
        raise VerificationError("unknown_key", f"{did!r} is a small-order or non-canonical "
                                               "ed25519 key (a signature by it proves nothing)")
    return Ed25519PublicKey.from_public_bytes(data[2:])


_P = 2**255 - 19
# the y-coordinates (sign bit cleared) of the points of order 1, 2, 4 and 8: for such a key one
# fixed signature verifies over every message
_SMALL_ORDER = frozenset(bytes.fromhex(h) for h in (
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
))


def _weak(raw: bytes) -> bool:
    """A public key no signature can be trusted from: a point of small order, or an encoding
    whose y is not reduced modulo p (a second spelling of some point)."""
    y = bytes(raw[:31]) + bytes([raw[31] & 0x7F])
    return y in _SMALL_ORDER or int.from_bytes(y, "little") >= _P


def _framed(domain: str, message: bytes) -> bytes:
    return domain.encode() + b"\0" + message


def verify_signature(did: str, domain: str, message: bytes, signature: bytes) -> None:
    """Check ``signature`` by ``did`` over ``message`` in ``domain``; raise
    ``VerificationError('signature')`` if it does not verify."""
    key = public_from_did(did)
    try:
        key.verify(signature, _framed(domain, message))
    except InvalidSignature:
        raise VerificationError("signature", f"signature by {did!r} does not verify") from None


@dataclass(frozen=True, slots=True, repr=False)
class Identity:
    """An agent's signing key and the ``did:key`` derived from it. The repr omits the key."""

    private_key: Ed25519PrivateKey
    did: str

    @classmethod
    def generate(cls) -> Identity:
        return cls.from_private(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity from a 32-byte seed (tests and known-answer vectors)."""
        return cls.from_private(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def from_private(cls, key: Ed25519PrivateKey) -> Identity:
        return cls(key, did_from_public(key.public_key()))

    def sign(self, domain: str, message: bytes) -> bytes:
        """Sign ``message`` in ``domain`` (see the module docstring)."""
        return self.private_key.sign(_framed(domain, message))

    def __repr__(self) -> str:
        return f"Identity({self.did!r})"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the key to a new 0600 file (steps 1-4 of the module docstring)."""
        target = Path(path)
        pem = self.private_key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
        if not create_private(target, pem):
            raise ConfigError(f"{str(target)!r}: key file already exists")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key file written by ``save``; ``ConfigError`` if it is missing, readable by
        group or others, or not an Ed25519 private key."""
        source = Path(path)
        try:
            data = read_private(source)
        except FileNotFoundError:
            raise ConfigError(f"{str(source)!r}: cannot read key file: no such file") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{str(source)!r}: not a private key file") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{str(source)!r}: not an ed25519 key")
        return cls.from_private(key)


ROTATION_DOMAIN = "bastion-rotation-v1"


def rotation_statement(old: Identity, new: Identity, *, agent_id: str, at: int) -> dict[str, Any]:
    """A key hand-over: ``old`` declares ``new`` its successor for ``agent_id`` at ``at``
    (unix seconds). Signed by the old key (``sig_old``: authority to hand over) and by the new
    key (``sig_new``: proof the successor holds its key). Verify with ``verify_rotation``."""
    body = {"v": 1, "agent": agent_id, "old": old.did, "new": new.did, "at": at}
    payload = canonical_json(body)
    return {**body, "sig_old": old.sign(ROTATION_DOMAIN, payload).hex(),
            "sig_new": new.sign(ROTATION_DOMAIN, payload).hex()}


def verify_rotation(statement: dict[str, Any], *, agent_id: str, current_did: str) -> str:
    """Check a rotation statement against the agent's current DID; return the new DID.

    1. The statement names ``agent_id`` and ``current_did`` as the old key, version 1.
    2. ``sig_old`` verifies under the old DID; ``sig_new`` under the new DID.
    Raises ``RegistryError`` otherwise.
    """
    try:
        body = {k: statement[k] for k in ("v", "agent", "old", "new", "at")}
        sig_old, sig_new = bytes.fromhex(statement["sig_old"]), bytes.fromhex(statement["sig_new"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RegistryError(f"malformed rotation statement: {exc}") from None
    if type(body["v"]) is not int or body["v"] != 1 or type(body["at"]) is not int \
            or body["agent"] != agent_id or body["old"] != current_did:
        raise RegistryError(f"rotation statement is not for agent {agent_id!r} at key "
                            f"{current_did!r}")
    if body["new"] == body["old"]:
        raise RegistryError("rotation statement does not change the key")
    try:
        payload = canonical_json(body)
        verify_signature(body["old"], ROTATION_DOMAIN, payload, sig_old)
        verify_signature(body["new"], ROTATION_DOMAIN, payload, sig_new)
    except (VerificationError, ValueError, TypeError) as exc:
        raise RegistryError(f"rotation statement: {exc}") from None
    return str(body["new"])
