"""The kernel's ``agent_facts`` provider backed by ``TrustEngine`` and the agent registry.

``TrustFacts(engine, registry=...)`` is a callable ``agent_id -> {"trust", "tier", "ring",
"roles"}`` to pass as ``Kernel(..., agent_facts=...)``, so CEL sees ``agent.trust``,
``agent.tier``, ``agent.ring`` and ``agent.roles``. It fails closed:

1. the engine is refreshed from the audit log at most every ``ttl_s`` (monotonic clock);
2. with a registry, an agent it does not know or has revoked gets ``UNTRUSTED``;
3. any error (the log does not verify, a store fails) gives ``UNTRUSTED`` as well.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from bastion.mesh._store import AgentRegistry
from bastion.mesh._trust import TIERS, TrustEngine

UNTRUSTED: dict[str, Any] = {"trust": 0, "tier": TIERS[0][0], "ring": TIERS[0][2], "roles": []}


class TrustFacts:
    """``AgentFacts`` for the kernel (steps 1-3 of the module docstring)."""

    def __init__(self, engine: TrustEngine, *, registry: AgentRegistry | None = None,
                 ttl_s: float = 5.0, monotonic: Callable[[], float] = time.monotonic):
        self._engine = engine
        self._registry = registry
        self._ttl = ttl_s
        self._monotonic = monotonic
        self._fresh_until = float("-inf")
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def __call__(self, agent_id: str) -> MappingProxyType[str, Any]:
        try:
            return MappingProxyType(self._facts(agent_id))
        except Exception as exc:  # fail closed: step 3
            self.last_error = f"{type(exc).__name__}: {exc}"
            return MappingProxyType(dict(UNTRUSTED))

    def _facts(self, agent_id: str) -> dict[str, Any]:
        with self._lock:  # step 1
            now = self._monotonic()
            if now >= self._fresh_until:
                self._fresh_until = float("-inf")
                self._engine.refresh()
                self._fresh_until = now + self._ttl
        roles: list[str] = []
        if self._registry is not None:  # step 2
            record = self._registry.get(agent_id)
            if record is None or not record.active:
                return dict(UNTRUSTED)
            roles = list(record.roles)
        report = self._engine.report(agent_id)
        return {"trust": report.score, "tier": report.tier, "ring": report.ring, "roles": roles}
