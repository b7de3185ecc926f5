"""The capability-token guard: how a presented token reaches the kernel.

The kernel never imports ``bastion.mesh``; it runs the ``Guard`` callables it was built with.
``TokenGuard`` is one. On every tool action (``pre_tool`` and ``post_tool``) it:

1. reads the token from ``action.context["bastion_token"]`` (a string); none → deny (when
   ``required``), anything but a string → deny;
2. works out whom the token may be for: the acting agent's id and, when a registry is given,
   its current DID; an agent the registry does not know or has revoked → deny;
3. verifies the token (``verify_token``: signatures, chain, expiry, narrowing, revocation, back to
   the trusted roots, audience = one of step 2; with a registry, every delegating key must be
   the current key of an active agent) → deny with the failure's reason;
4. checks the canonical tool and the arguments against every link's scopes and constraints
   → deny with the first reason;
5. at ``pre_tool``, unless ``unsafe_bearer``: checks ``context["bastion_token_proof"]``
   (``prove_call``), a signature by the token's audience key over this token, tool, arguments,
   time and a nonce, fresh (``|now - ts| <= skew_s``) and used once: its nonce is held until
   ``ts + 2 * MAX_SKEW_S``: the widest skew any guard sharing the nonce store may accept, plus
   as much again for the clock of the process that prunes expired nonces (which may run ahead)
   — so a copied token is useless without the key, and a used proof is refused by every guard.

Actions without a tool (``input``/``output``) pass to the policy unchanged.
"""

from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import orjson

from bastion._canon import canonical_json, canonical_tool, digest, jsonable
from bastion.kernel import Action
from bastion.mesh._errors import VerificationError
from bastion.mesh._keys import Identity, verify_signature
from bastion.mesh._store import AgentRegistry, NonceStore, RevocationList
from bastion.mesh._tokens import b64d, b64e, verify_token

CONTEXT_KEY = "bastion_token"
PROOF_KEY = "bastion_token_proof"
PROOF_DOMAIN = "bastion-call-v1"
# No guard may accept more clock skew than this: a proof's nonce is held until ``ts`` plus this,
# so a guard sharing the nonce store with a wider window still sees every nonce it could accept.
MAX_SKEW_S = 300
_NONCE = re.compile(r"[!-~]{1,128}")  # printable ASCII: no NUL a store could refuse


def prove_call(holder: Identity, token: str, tool: str, args: Mapping[str, Any], *,
               now: float, nonce: str | None = None) -> str:
    """Proof that the holder of the token's audience key makes this very call: a signature
    over the token's digest, the canonical tool name, the arguments' digest, the time and a
    nonce. Present it as ``context["bastion_token_proof"]`` beside the token."""
    body = _call_body(token, tool, args, now, nonce or secrets.token_hex(16))
    if body is None:
        raise ValueError(f"invalid tool name {tool!r}")
    sig = holder.sign(PROOF_DOMAIN, canonical_json(body))
    return b64e(canonical_json({**body, "sig": b64e(sig)}))


def _call_body(token: str, tool: str, args: Any, ts: float, nonce: str) -> dict[str, Any] | None:
    name = canonical_tool(tool)
    if name is None:
        return None
    plain = dict(args) if isinstance(args, Mapping) else args  # any mapping type, same digest
    return {"token": digest(token), "tool": name, "args": digest(jsonable(plain)), "ts": ts,
            "nonce": nonce}


class TokenGuard:
    """A kernel ``Guard`` that admits only tool calls a presented capability token grants."""

    name = "capability_token"

    def __init__(self, *, roots: Collection[str], revocations: RevocationList | None = None,
                 registry: AgentRegistry | None = None, required: bool = True,
                 nonces: NonceStore | None = None, unsafe_bearer: bool = False,
                 clock: Callable[[], float] = time.time, skew_s: int = 30):
        if not roots:
            raise ValueError("a token guard needs at least one trusted root DID")
        if not 0 < skew_s <= MAX_SKEW_S:
            raise ValueError(f"skew_s must be in (0, {MAX_SKEW_S}]")
        if not unsafe_bearer and nonces is None:
            raise ValueError("a token guard needs a nonce store to check proofs of possession "
                             "(or unsafe_bearer=True to accept tokens as bearer credentials)")
        self._nonces = nonces
        self._bearer = unsafe_bearer
        # what the kernel records as the admitting guard: trust counts only proven holders
        self.name = "capability_token_bearer" if unsafe_bearer else "capability_token"
        self._roots = frozenset(roots)
        self._revocations = revocations
        self._registry = registry
        self._required = required
        self._clock = clock
        self._skew = skew_s

    def __call__(self, action: Action, tool: str, agent_id: str) -> str | None:
        if action.stage not in ("pre_tool", "post_tool"):
            return None
        presented: Any = (action.context or {}).get(CONTEXT_KEY)  # step 1
        if presented is None:
            return "no capability token presented" if self._required else None
        if not isinstance(presented, str):
            return "the capability token must be a string"
        audience = {agent_id} if agent_id else set()  # step 2
        key_did: str | None = None  # the key a proof must be signed with
        if self._registry is not None:
            record = self._registry.get(agent_id) if agent_id else None
            if record is None or not record.active:
                return f"agent {agent_id!r} is not a registered, active agent"
            # the agent's current key, and its id unless that is a DID: an id that is a key
            # it rotated away from (or another key's DID) proves nothing
            audience = {record.did} | ({agent_id} if not agent_id.startswith("did:") else set())
            key_did = record.did
        if not audience:
            return "the action names no agent"
        try:  # step 3
            verified = verify_token(presented, roots=self._roots, now=self._clock(),
                                    audience=audience, revocations=self._revocations,
                                    skew_s=self._skew,
                                    issuer_ok=None if self._registry is None
                                    else self._registry.is_current_key)
        except VerificationError as exc:
            return f"token refused: {exc}"
        args = action.args if action.args is not None else {}
        if not self._bearer and action.stage == "pre_tool":  # step 5
            refusal = self._check_proof(action, presented, tool, args,
                                        key_did or verified.holder)
            if refusal is not None:
                return refusal
        problem = verified.permits(tool, args)
        return None if problem is None else f"token does not grant this call: {problem}"

    def _check_proof(self, action: Action, token: str, tool: str, args: Any,
                     did: str) -> str | None:
        """The call is signed by ``did`` (the acting agent's current key with a registry, else
        the token's audience), for this token, tool and arguments, recently, once."""
        raw = (action.context or {}).get(PROOF_KEY)
        if not isinstance(raw, str):
            return "no proof of possession presented with the token"
        try:
            proof = orjson.loads(b64d(raw))
            sig = b64d(proof.pop("sig"))
            ts, nonce = proof["ts"], proof["nonce"]
        except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONDecodeError):
            return "the proof of possession is malformed"
        if type(ts) not in (int, float) or not math.isfinite(ts) or not isinstance(nonce, str) \
                or _NONCE.fullmatch(nonce) is None:
            return "the proof of possession is malformed"
        expected = _call_body(token, tool, args, ts, nonce)
        if proof != expected:
            return "the proof of possession is for another token, tool or arguments"
        try:
            verify_signature(did, PROOF_DOMAIN, canonical_json(proof), sig)
        except (VerificationError, ValueError) as exc:
            return f"the proof of possession does not verify: {exc}"
        now = self._clock()
        if abs(now - ts) > self._skew:
            return "the proof of possession is stale"
        assert self._nonces is not None
        if not self._nonces.claim_nonce(f"call:{did}", nonce, expires=ts + 2 * MAX_SKEW_S + 1,
                                        now=now):
            return "the proof of possession was already used (replay)"
        return None
