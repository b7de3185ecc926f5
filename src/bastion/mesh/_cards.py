"""Signed A2A agent cards, bound to the agent's ``did:key``.

A card is signed as a JWS with a detached, canonical payload, in the shape A2A uses for
``AgentCard.signatures`` (``protected`` + ``signature``, base64url):

1. Take the card's JSON (a mapping, or an ``a2a.types.AgentCard`` from ``a2a-sdk`` converted with
   protobuf's ``MessageToDict``), drop ``signatures``, drop empty values, encode canonically
   (sorted keys, no white space: ``bastion._canon.canonical_json``).
2. The protected header is ``{"alg": "EdDSA", "kid": <signer DID>, "typ": "JOSE"}``.
3. The signature is Ed25519 over ``base64url(header) + "." + base64url(payload)`` (JWS signing
   input, RFC 7515), so a JOSE library holding the public key can check it too.

Verification (``verify_card``) accepts the card only when a signature's ``kid`` is the expected
DID, its ``alg`` is ``EdDSA`` and it verifies over the card as received: a peer's card is thereby
checked against the DID it proved in the handshake.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature

from bastion._canon import canonical_json
from bastion.mesh._errors import VerificationError
from bastion.mesh._keys import Identity, public_from_did
from bastion.mesh._tokens import b64d, b64e


def card_json(card: Any) -> dict[str, Any]:
    """The JSON shape of ``card``: a mapping as is, or an ``a2a-sdk`` protobuf ``AgentCard``."""
    if isinstance(card, Mapping):
        return dict(card)
    if hasattr(card, "DESCRIPTOR"):
        import importlib  # a2a-sdk cards are protobuf messages; protobuf ships no type stubs

        json_format = importlib.import_module("google.protobuf.json_format")
        return dict(json_format.MessageToDict(card))
    raise TypeError(f"not an agent card: {type(card).__name__}")


def _clean(value: Any) -> Any:
    if isinstance(value, Mapping):
        out = {k: _clean(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def card_payload(card: Any) -> bytes:
    """Step 1: the canonical bytes a card signature covers."""
    body = {k: v for k, v in card_json(card).items() if k != "signatures"}
    return canonical_json(_clean(body))


def sign_card(card: Any, identity: Identity) -> dict[str, str]:
    """Steps 1-3: an A2A ``AgentCardSignature`` (``protected``, ``signature``) for ``card``.
    For an ``a2a-sdk`` card append it with ``card.signatures.append(AgentCardSignature(**sig))``;
    for a mapping, add it to the card's ``signatures`` list."""
    header = b64e(canonical_json({"alg": "EdDSA", "kid": identity.did, "typ": "JOSE"}))
    signing_input = f"{header}.{b64e(card_payload(card))}".encode()
    return {"protected": header, "signature": b64e(identity.private_key.sign(signing_input))}


def verify_card(card: Any, *, did: str) -> None:
    """Raise ``VerificationError`` unless ``card`` carries a valid signature by ``did``."""
    try:
        data = card_json(card)
    except (TypeError, ValueError, AttributeError) as exc:  # a JSON list or text from a peer
        raise VerificationError("malformed", f"an agent card is a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise VerificationError("malformed", "an agent card is a JSON object")
    signatures = data.get("signatures") or []
    if not isinstance(signatures, list) or not signatures:
        raise VerificationError("signature", "agent card is not signed")
    key = public_from_did(did)
    try:
        payload = b64e(card_payload(data))
    except (ValueError, TypeError) as exc:  # e.g. a NaN or a non-string key: no signature covers it
        raise VerificationError("malformed", f"agent card cannot be encoded: {exc}") from None
    for sig in signatures:
        try:
            header = json.loads(b64d(sig["protected"]))
            if header.get("alg") != "EdDSA" or header.get("kid") != did:
                continue
            key.verify(b64d(sig["signature"]), f"{sig['protected']}.{payload}".encode())
            return
        except (InvalidSignature, ValueError, KeyError, TypeError, AttributeError):
            continue
    raise VerificationError("signature", f"no valid signature by {did!r} on the agent card")
