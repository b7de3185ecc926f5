"""Signed envelopes for agent-to-agent messages.

Wire form: the canonical JSON of ``{"h": header, "b": base64url(body)}`` where the header is::

    {"v": 1, "from": DID, "to": recipient (DID or agent id), "ts": unix-ms, "nonce": hex,
     "digest": "sha256:<hex of body>", "sig": base64url}

``sig`` is the sender's Ed25519 signature (domain ``bastion-envelope-v1``) over the canonical
JSON of the header without ``sig``. Opening an envelope (``open_envelope``), in this order; the
first failure raises ``EnvelopeError``:

1. Decode strictly: size, canonical JSON, exactly the known fields, base64url. (``malformed``)
2. The signature verifies under the sender's DID. (``signature``)
3. The recipient is one of ours. (``recipient``)
4. ``|now - ts| <= skew_s``. (``stale``)
5. The body's digest matches. (``digest``)
6. The sender is accepted, when a check is given (registered, not revoked). (``unknown_key``)
7. The nonce is claimed in the shared nonce store under the sender, held until
   ``ts + 2 * MAX_SKEW_S`` — the largest skew any receiver may accept, plus as much again for
   the clock of whichever process prunes expired nonces (it may run ahead), so a process
   configured with a wider window than the one that claimed the nonce still sees it
   (after which step 4 refuses the envelope anyway). Already held → ``replay``.

The nonce is claimed last so an envelope that fails any other check never burns a nonce.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import orjson

from bastion._canon import canonical_json
from bastion.mesh._errors import EnvelopeError, VerificationError
from bastion.mesh._keys import Identity, verify_signature
from bastion.mesh._store import NonceStore
from bastion.mesh._tokens import b64d, b64e

DOMAIN = "bastion-envelope-v1"
MAX_BYTES = 1 << 20
MAX_SKEW_S = 3600.0  # no receiver may accept more clock skew than this
_NONCE = re.compile(r"[0-9a-f]{1,128}")
_HEADER = frozenset(("v", "from", "to", "ts", "nonce", "digest", "sig"))


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified envelope: who sent it, to whom, when, and the body."""

    sender: str
    recipient: str
    ts_ms: int
    nonce: str
    body: bytes


def _body_digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def seal(sender: Identity, recipient: str, body: bytes, *, now: float,
         nonce: str | None = None) -> bytes:
    """Sign ``body`` from ``sender`` to ``recipient`` at ``now`` (unix seconds)."""
    if nonce is not None and _NONCE.fullmatch(nonce) is None:
        raise EnvelopeError("malformed", "the nonce must be 1 to 128 lower-case hex digits")
    header = {"v": 1, "from": sender.did, "to": recipient, "ts": int(now * 1000),
              "nonce": nonce or secrets.token_hex(16), "digest": _body_digest(body)}
    header["sig"] = b64e(sender.sign(DOMAIN, canonical_json(header)))
    return canonical_json({"h": header, "b": b64e(body)})


def open_envelope(wire: bytes, *, recipient: str | Collection[str], nonces: NonceStore,
                  now: float, skew_s: float = 30.0,
                  accept_sender: Callable[[str], bool] | None = None) -> Opened:
    """Verify and open ``wire`` (steps 1-7 of the module docstring)."""
    header, body = _decode(wire)  # step 1
    unsigned = {k: v for k, v in header.items() if k != "sig"}
    try:  # step 2
        verify_signature(header["from"], DOMAIN, canonical_json(unsigned), b64d(header["sig"]))
    except (VerificationError, ValueError) as exc:
        raise EnvelopeError("signature", f"envelope from {header['from']!r}: {exc}") from None
    ours = {recipient} if isinstance(recipient, str) else set(recipient)
    if header["to"] not in ours:  # step 3
        raise EnvelopeError("recipient", f"envelope is addressed to {header['to']!r}")
    ts = header["ts"] / 1000.0
    if not 0 < skew_s <= MAX_SKEW_S:
        raise EnvelopeError("config", f"skew_s must be in (0, {MAX_SKEW_S}]")
    if abs(now - ts) > skew_s:  # step 4
        raise EnvelopeError("stale", f"envelope timestamp is {now - ts:.1f}s off (skew "
                                     f"{skew_s}s)")
    if _body_digest(body) != header["digest"]:  # step 5
        raise EnvelopeError("digest", "body does not match the signed digest")
    if accept_sender is not None and not accept_sender(header["from"]):  # step 6
        raise EnvelopeError("unknown_key", f"sender {header['from']!r} is not accepted")
    if not nonces.claim_nonce(f"env:{header['from']}", header["nonce"],  # step 7
                              expires=ts + 2 * MAX_SKEW_S, now=now):
        raise EnvelopeError("replay", f"nonce {header['nonce']!r} was already used")
    return Opened(header["from"], header["to"], header["ts"], header["nonce"], body)


def _decode(wire: bytes) -> tuple[dict[str, Any], bytes]:
    if not isinstance(wire, bytes | bytearray) or len(wire) > MAX_BYTES:
        raise EnvelopeError("malformed", "an envelope is at most 1 MiB of bytes")
    try:
        outer = orjson.loads(wire)
        if canonical_json(outer) != bytes(wire):
            raise ValueError("non-canonical json")
        if not isinstance(outer, dict) or set(outer) != {"h", "b"}:
            raise ValueError("expected fields 'h' and 'b'")
        header, body = outer["h"], b64d(outer["b"])
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise EnvelopeError("malformed", f"cannot decode envelope: {exc}") from None
    if not isinstance(header, dict) or set(header) != _HEADER or header["v"] != 1 \
            or type(header["v"]) is not int:  # not True, not 1.0
        raise EnvelopeError("malformed", "unexpected envelope header fields")
    if type(header["ts"]) is not int or not all(
            isinstance(header[k], str) and header[k] for k in ("from", "to", "nonce", "sig",
                                                              "digest")):
        raise EnvelopeError("malformed", "envelope header fields have wrong types")
    if _NONCE.fullmatch(header["nonce"]) is None:
        raise EnvelopeError("malformed", "the nonce must be 1 to 128 lower-case hex digits")
    return header, body
