"""Execution rings 0-3, enforced by the kernel as a guard.

A ring is a set of tool classes from the catalog (``bastion.flow``). By default::

    ring 3: read                       (new and untrusted agents)
    ring 2: read, write
    ring 1: read, write, egress, code
    ring 0: everything, including admin and tools the catalog does not declare

The check, on every action:

1. Take the agent's base ring from ``ring_of(agent_id)`` — the trust layer's facts, never the
   caller's request. No answer means ring 3.
2. If an unexpired elevation grant exists for the agent (state store), use the lower ring it
   grants. A grant counts only when it names this agent and ring 0-2, and only while
   ``granted - ELEVATION_SKEW_S <= now < expires``: an expired grant, and one granted "in the
   future" (a clock behind the granting process's by more than the skew, which would
   otherwise extend the grant by the difference), grant nothing. A grant that does not say
   when it was granted (written by hand) counts only while it has at most
   ``MAX_ELEVATION_S`` left.
3. Look the tool up in the catalog; an undeclared tool is class ``unknown``.
4. Deny (``code: guard``) unless the class is in the ring's set, naming tool, class and ring.

An elevation is time-boxed, needs an approver other than the agent itself, is written to the
state store (so every process sees it) and is audited; it ends by itself at expiry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bastion._canon import norm_text
from bastion._errors import ConfigError
from bastion.flow import CLASSES, ToolCatalog
from bastion.state import StateStore

DEFAULT_RINGS: Mapping[int, frozenset[str]] = {
    3: frozenset({"read"}),
    2: frozenset({"read", "write"}),
    1: frozenset({"read", "write", "egress", "code"}),
    0: frozenset(CLASSES),
}
MAX_ELEVATION_S = 24 * 3600
ELEVATION_SKEW_S = 30.0  # how far behind the granting process's clock another one may be


@dataclass(frozen=True, slots=True)
class Elevation:
    agent: str
    ring: int
    expires: float
    approved_by: str
    reason: str
    granted: float | None = None  # None: a grant written without it (checked against now)


class RingGuard:
    """A kernel guard (``Kernel(guards=[RingGuard(...)])``) enforcing rings (steps 1-4)."""

    name = "rings"

    def __init__(self, catalog: ToolCatalog, *, ring_of: Callable[[str], Any],
                 state: StateStore, audit: Any = None,
                 rings: Mapping[int, frozenset[str]] = DEFAULT_RINGS,
                 clock: Callable[[], float] = time.time):
        if sorted(rings) != [0, 1, 2, 3]:
            raise ConfigError("rings must define exactly rings 0, 1, 2 and 3")
        self._catalog = catalog
        self._ring_of = ring_of
        self._state = state
        self._audit = audit
        self._rings = rings
        self._clock = clock

    def ring(self, agent_id: str) -> int:
        """The ring in force for ``agent_id`` now (steps 1-2)."""
        base = self._ring_of(agent_id)
        ring = base if isinstance(base, int) and not isinstance(base, bool) and 0 <= base <= 3 \
            else 3
        grant = self.elevation(agent_id)
        return min(ring, grant.ring) if grant is not None else ring

    def __call__(self, action: Any, tool: str, agent_id: str) -> str | None:
        ring = self.ring(agent_id)
        info = self._catalog.get(tool)  # step 3
        if info.tool_class in self._rings[ring]:
            return None
        allowed = ", ".join(sorted(self._rings[ring]))
        return (f"tool {tool!r} is class {info.tool_class!r}, outside ring {ring} of agent "
                f"{agent_id!r} (ring {ring} allows: {allowed})")

    def elevation(self, agent_id: str) -> Elevation | None:
        raw = self._state.flags().get(f"elevation:{agent_id}")
        if raw is None:
            return None
        try:
            grant = Elevation(**json.loads(raw))
        except (TypeError, ValueError):
            return None  # unreadable: grants nothing
        now = self._clock()
        granted = now if grant.granted is None else grant.granted
        if (grant.agent != agent_id or type(grant.ring) is not int or grant.ring not in (0, 1, 2)
                or type(grant.expires) not in (int, float) or type(granted) not in (int, float)
                or not grant.expires - granted <= MAX_ELEVATION_S + 1):
            return None  # not a grant elevate() would write for this agent: grants nothing
        return grant if granted - ELEVATION_SKEW_S <= now < grant.expires else None

    def elevate(self, agent_id: str, ring: int, *, seconds: float, approved_by: str,
                reason: str) -> Elevation:
        """Grant ``agent_id`` ring ``ring`` for ``seconds`` (audited: a guard without an audit
        log grants nothing)."""
        if self._audit is None:
            raise ConfigError("an elevation is audited: give the RingGuard an audit log "
                              "(audit=kernel.audit)")
        if not agent_id:
            raise ConfigError("an elevation needs an agent id")
        if not norm_text(approved_by) or norm_text(approved_by) == norm_text(agent_id):
            raise ConfigError("an elevation needs an approver other than the agent itself")
        if type(ring) is not int or ring not in (0, 1, 2) or not 0 < seconds <= MAX_ELEVATION_S:
            raise ConfigError(f"elevate to ring 0-2 for 1 s to {MAX_ELEVATION_S} s")
        if not reason:
            raise ConfigError("an elevation needs a reason")
        now = self._clock()
        grant = Elevation(agent_id, ring, now + seconds, approved_by, reason, now)
        self._record("ring.elevate", grant)  # first: a grant the audit cannot hold is not made
        self._state.set_flag(f"elevation:{agent_id}", json.dumps(_fields(grant)))
        return grant

    def revoke(self, agent_id: str, *, by: str) -> bool:
        grant = self.elevation(agent_id)
        gone = self._state.clear_flag(f"elevation:{agent_id}")
        if gone and grant is not None:
            self._record("ring.revoke", grant, by=by)
        return gone

    def _record(self, kind: str, grant: Elevation, **extra: Any) -> None:
        if self._audit is not None:
            ts = time.time_ns()
            self._audit.append({"kind": kind, "id": f"{kind}:{grant.agent}:{ts}", "ts": ts,
                                **_fields(grant), **extra})


def _fields(grant: Elevation) -> dict[str, Any]:
    return {"agent": grant.agent, "ring": grant.ring, "expires": grant.expires,
            "approved_by": grant.approved_by, "reason": grant.reason, "granted": grant.granted}
