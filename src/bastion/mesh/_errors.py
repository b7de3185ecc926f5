"""Errors of ``bastion.mesh``, under the one ``BastionError`` tree.

``MeshError`` is the root here. ``VerificationError`` (and its ``TokenError``,
``EnvelopeError``, ``HandshakeError``) are run-time outcomes: something presented to us did not
verify; ``reason`` is one stable word for why (``signature``, ``expired``, ``revoked``, ...).
Configuration mistakes (a bad scope pattern, a key file with loose permissions) raise
``bastion.ConfigError`` as everywhere else.
"""

from __future__ import annotations

from bastion._errors import BastionError


class MeshError(BastionError):
    """Root of the errors of identity, tokens, trust and envelopes."""

    code = "mesh_error"


class VerificationError(MeshError):
    """Something presented (a token, an envelope, a card, a proof) failed verification.

    ``reason`` is a stable word: ``malformed``, ``signature``, ``expired``, ``not_yet_valid``,
    ``untrusted_root``, ``broken_chain``, ``widened``, ``audience``, ``revoked``, ``replay``,
    ``stale``, ``recipient``, ``digest``, ``unknown_key``, ``too_deep``, ``trust``.
    """

    code = "verification_failed"

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class TokenError(VerificationError):
    code = "token_invalid"


class EnvelopeError(VerificationError):
    code = "envelope_invalid"


class HandshakeError(VerificationError):
    code = "handshake_failed"


class RegistryError(MeshError):
    """An agent is unknown, already registered, or a rotation statement does not verify."""

    code = "registry_error"
