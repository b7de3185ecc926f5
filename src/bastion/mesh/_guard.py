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
   → deny with the first reason.

Actions without a tool (``input``/``output``) pass to the policy unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from bastion.kernel import Action
from bastion.mesh._errors import VerificationError
from bastion.mesh._store import AgentRegistry, RevocationList
from bastion.mesh._tokens import verify_token

CONTEXT_KEY = "bastion_token"


class TokenGuard:
    """A kernel ``Guard`` that admits only tool calls a presented capability token grants."""

    name = "capability_token"

    def __init__(self, *, roots: Collection[str], revocations: RevocationList | None = None,
                 registry: AgentRegistry | None = None, required: bool = True,
                 clock: Callable[[], float] = time.time, skew_s: int = 30):
        if not roots:
            raise ValueError("a token guard needs at least one trusted root DID")
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
        if self._registry is not None:
            record = self._registry.get(agent_id) if agent_id else None
            if record is None or not record.active:
                return f"agent {agent_id!r} is not a registered, active agent"
            audience.add(record.did)
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
        problem = verified.permits(tool, action.args if action.args is not None else {})
        return None if problem is None else f"token does not grant this call: {problem}"
