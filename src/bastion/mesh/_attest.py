"""Signed attestations: one identity's statement about another agent's behaviour.

An attestation is evidence for ``TrustScore`` only once bastion has recorded it in the audit log
(``record_attestation``) and its signature verifies. SLO breaches are recorded the same way
(``record_slo_breach``) by whatever measures the objective. Fields::

    {"v": 1, "issuer": DID, "subject": agent-id, "kind": "positive"|"negative"|"severe",
     "weight": 1..20, "reason": str, "at": unix-s, "nonce": hex, "sig": base64url}
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping
from typing import Any

from bastion._canon import canonical_json, digest
from bastion._errors import ConfigError
from bastion.mesh._errors import VerificationError
from bastion.mesh._keys import Identity, verify_signature
from bastion.mesh._tokens import b64d, b64e

DOMAIN = "bastion-attestation-v1"
KINDS = ("positive", "negative", "severe")
MAX_WEIGHT = 20
_FIELDS = frozenset(("v", "issuer", "subject", "kind", "weight", "reason", "at", "nonce", "sig"))


def make_attestation(issuer: Identity, *, subject: str, kind: str, weight: int = 5,
                     reason: str = "", at: int) -> dict[str, Any]:
    """Sign a statement by ``issuer`` about agent ``subject``."""
    if kind not in KINDS:
        raise ConfigError(f"attestation kind {kind!r} is not one of {KINDS}")
    if type(weight) is not int or not 1 <= weight <= MAX_WEIGHT:
        raise ConfigError(f"attestation weight must be an integer 1..{MAX_WEIGHT}")
    body = {"v": 1, "issuer": issuer.did, "subject": subject, "kind": kind, "weight": weight,
            "reason": reason[:500], "at": at, "nonce": secrets.token_hex(8)}
    return {**body, "sig": b64e(issuer.sign(DOMAIN, canonical_json(body)))}


def verify_attestation(att: Any) -> dict[str, Any]:
    """Return the attestation when it is well formed and its signature verifies under its
    issuer's DID; else ``VerificationError``."""
    if not isinstance(att, Mapping) or set(att) != _FIELDS or att["v"] != 1 \
            or type(att["v"]) is not int:  # not True, not 1.0
        raise VerificationError("malformed", "not a version 1 attestation")
    if att["kind"] not in KINDS or type(att["weight"]) is not int \
            or not 1 <= att["weight"] <= MAX_WEIGHT or type(att["at"]) is not int \
            or not all(isinstance(att[k], str) for k in ("subject", "issuer", "sig")) \
            or not all(isinstance(att[k], str) for k in _FIELDS & {"nonce", "reason"}):
        raise VerificationError("malformed", "attestation fields out of range")
    body = {k: v for k, v in att.items() if k != "sig"}
    try:
        sig = b64d(att["sig"])
        message = canonical_json(body)
    except (TypeError, ValueError):
        raise VerificationError("malformed", "attestation cannot be read (its signature or "
                                             "fields)") from None
    verify_signature(att["issuer"], DOMAIN, message, sig)
    return dict(att)


def record_attestation(audit: Any, att: Mapping[str, Any], *,
                       clock: Any = time.time_ns) -> str:
    """Verify ``att`` and append it to ``audit`` (an ``AuditLog``) as an ``attestation``
    event; return the event id. An attestation that does not verify is never recorded."""
    checked = verify_attestation(att)
    event_id = "att:" + digest(checked)[7:39]
    audit.append({"kind": "attestation", "id": event_id, "ts": int(clock()),
                  "agent": checked["subject"], "attestation": checked})
    return event_id


def record_slo_breach(audit: Any, *, agent: str, slo: str, objective: float, observed: float,
                      window_s: float, by: str, clock: Any = time.time_ns) -> str:
    """Append an ``slo_breach`` event for ``agent`` to ``audit`` (an ``AuditLog``): evidence
    for ``TrustScore`` (``slo_breach`` points), recorded by whoever measures the objective
    (``by``) in the same tamper-evident log as the decisions. Returns the event id."""
    if not (isinstance(agent, str) and agent and isinstance(slo, str) and slo
            and isinstance(by, str) and by):
        raise ConfigError("an SLO breach needs the agent, the SLO's name and who recorded it")
    numbers = (objective, observed, window_s)
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
               for x in numbers) or window_s <= 0:
        raise ConfigError("objective, observed and window_s must be finite numbers "
                          "(window_s > 0)")
    ts = int(clock())
    event_id = f"slo:{digest([agent, slo, ts])[7:39]}"
    audit.append({"kind": "slo_breach", "id": event_id, "ts": ts, "agent": agent, "slo": slo,
                  "objective": objective, "observed": observed, "window_s": window_s, "by": by})
    return event_id
