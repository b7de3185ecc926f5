"""``TrustScore``: 0-1000 per agent, earned only from evidence bastion itself recorded.

Evidence is read from the audit log (never from the caller): ``decision`` events (allows,
denials by rules = violations, guard refusals, refused approvals), ``outcome`` events (attributed
through their decision id), ``approval`` events, ``slo_breach`` events and ``attestation`` events
whose signature verifies and whose issuer is another registered, active identity. By default
(``authenticated_only``) a decision counts only when a ``TokenGuard`` proved who asked: at
``pre_tool``, with a token, not refused before the guards ran; a guard refusal counts against
the agent only when it is TokenGuard's own "token does not grant this call".

Scoring folds the events in log order, per agent. For each event, in this order:

1. Decay: the agent's deviation from the prior (``score - prior``) halves every
   ``half_life_s`` of event time since its previous event (also applied up to "now" when read).
2. Period: a new ``period_s`` window resets the period's gain and its violation flag.
3. Gain: positive points are capped so the period's total gain stays within
   ``max_gain_per_period``; a period that holds a violation gains nothing more (a burst of good
   events cannot wash a violation out).
4. Loss: negative points apply in full; violations set the period's violation flag.
5. Severe: a severe event (a denial by one of ``severe_rules``, a severe attestation) moves the
   score below the floor of the agent's current tier at once, then applies its points.
6. Clamp to 0..1000.

New agents start at ``prior`` (probation). ``TrustReport.breakdown`` says what moved the score.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion._canon import digest
from bastion.mesh._attest import verify_attestation
from bastion.mesh._errors import MeshError, VerificationError
from bastion.mesh._store import AgentRegistry

TIERS: tuple[tuple[str, int, int], ...] = (  # name, lowest score, suggested ring
    ("untrusted", 0, 3), ("probation", 200, 3), ("standard", 400, 2), ("trusted", 600, 1),
    ("privileged", 800, 0))
# TokenGuard's refusal once a token verified (and, at pre_tool, its proof): the kernel writes it
# as "<guard name>: <refusal>". Matched as a prefix: the rest of a reason can quote what a caller
# sent (a forged token's fields), so a substring test could be satisfied by anyone.
_PROVEN = "capability_token: token does not grant this call: "
_VIOLATIONS = frozenset(("violation", "severe_violation", "guard_denied", "approval_refused",
                         "invalid_tool", "negative_attestation", "severe_attestation",
                         "slo_breach"))
_DEFAULT_POINTS: dict[str, int] = {
    "allowed": 1, "outcome_succeeded": 2, "approval_granted": 3,
    "violation": -40, "severe_violation": -150, "guard_denied": -40, "approval_refused": -20,
    "invalid_tool": -20, "denied_default": -5, "limit_hit": -5, "outcome_failed": -3,
    "outcome_exception": -5, "slo_breach": -10, "negative_attestation": -1,
    "positive_attestation": 1, "severe_attestation": -150,
}


def tier_of(score: int) -> tuple[str, int]:
    """The tier name and suggested ring of ``score``."""
    name, ring = TIERS[0][0], TIERS[0][2]
    for tier, low, r in TIERS:
        if score >= low:
            name, ring = tier, r
    return name, ring


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """Scoring parameters; ``points`` overrides entries of the default table."""

    prior: int = 300
    period_s: int = 86400
    max_gain_per_period: int = 25
    half_life_s: float = 14 * 86400.0
    severe_rules: frozenset[str] = frozenset()
    points: Mapping[str, int] = field(default_factory=dict)
    # an attestation counts only from an issuer whose own trust is at least this (standard tier),
    # and at most once per issuer, subject and period
    min_attester_trust: int = 500
    # count only pre_tool decisions that carried a capability token (a TokenGuard verified it and
    # the proof of possession, or refused the call): elsewhere the agent id is only the caller's
    # claim. Set False where agent ids are authenticated some other way.
    authenticated_only: bool = True

    def value(self, kind: str) -> int:
        return int(self.points.get(kind, _DEFAULT_POINTS[kind]))


@dataclass(frozen=True, slots=True)
class Contribution:
    """One kind of evidence: how many events, the points they asked for, the points applied."""

    kind: str
    count: int
    requested: int
    applied: float


@dataclass(frozen=True, slots=True)
class TrustReport:
    agent: str
    score: int
    tier: str
    ring: int
    prior: int
    breakdown: tuple[Contribution, ...]
    decay: float
    severe_drops: int
    events: int

    def to_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "trust": self.score, "tier": self.tier, "ring": self.ring,
                "prior": self.prior, "decay": round(self.decay, 2),
                "severe_drops": self.severe_drops, "events": self.events,
                "breakdown": [{"kind": c.kind, "count": c.count, "requested": c.requested,
                               "applied": round(c.applied, 2)} for c in self.breakdown]}


class _Agent:
    __slots__ = ("contrib", "decay", "delta", "events", "last", "period", "period_gain",
                 "period_violation", "severe")

    def __init__(self) -> None:
        self.delta = 0.0
        self.last: float | None = None
        self.period = -1
        self.period_gain = 0.0
        self.period_violation = False
        self.contrib: dict[str, list[float]] = {}
        self.decay = 0.0
        self.severe = 0
        self.events = 0


# how the audit records a token that is not there (credentials are recorded by digest only)
_NO_TOKEN = [None, "", *({"$masked": digest(v)} for v in (None, ""))]


def _authenticated(event: Mapping[str, Any]) -> bool:
    """The decision passed a ``TokenGuard`` that proved who asked: a ``pre_tool`` decision (the
    only stage where the guard checks the proof of possession; it does not run at ``input`` and
    ``output``) that carried a token and that the kernel records as admitted by
    ``capability_token`` (a proof-checking ``TokenGuard``; in bearer mode it is named
    otherwise). The kernel names no admitting guard for a decision made before the guards ran
    (an invalid tool name, the kill switch) or by a guard's refusal; a refusal counts only as
    TokenGuard's own (``_decision_kind``)."""
    context = event.get("context")
    if not (event.get("stage") == "pre_tool" and isinstance(context, dict)
            and "bastion_token" in context):
        return False
    if context["bastion_token"] in _NO_TOKEN:  # the key present, no token in it: an optional
        return False                           # guard let it by without proving anything
    if event.get("code") == "guard":
        return True
    guards = event.get("guards")
    return isinstance(guards, list) and "capability_token" in guards


class TrustEngine:
    """Folds the audit log into per-agent scores (steps 1-6 of the module docstring).

    ``refresh`` reads only entries added since the last call; with ``verify_log`` (default) the
    whole log's chain is verified first, and a log that does not verify raises ``MeshError``.
    Thread-safe.
    """

    def __init__(self, audit: Any, *, config: TrustConfig | None = None,
                 registry: AgentRegistry | None = None, verify_log: bool = True,
                 clock: Callable[[], float] = time.time):
        self._audit = audit
        self.config = config or TrustConfig()
        self._registry = registry
        self._verify = verify_log
        self._clock = clock
        self._agents: dict[str, _Agent] = {}
        self._owner: dict[str, str] = {}  # decision id / approval id -> agent
        self._seen_att: set[str] = set()
        self._att_periods: set[tuple[str, str, int]] = set()
        self._next_seq = 0
        self._verified_mac: str | None = None  # mac of the last entry folded
        self._lock = threading.Lock()

    def refresh(self) -> None:
        from bastion.audit import read_events, verify, verify_tail

        with self._lock:
            flush = getattr(self._audit, "flush", None)
            if callable(flush):
                flush()
            limit = None
            if self._verify:  # in full once, then only what was appended since
                full = self._verified_mac is None
                report = verify(self._audit) if full else verify_tail(
                    self._audit, since_seq=self._next_seq, prev_mac=str(self._verified_mac))
                if not report.ok:
                    raise MeshError(f"audit log does not verify: {report.reason}")
                # fold only what was verified: entries appended meanwhile wait for next time
                limit = report.entries - self._next_seq if full else report.entries
                if limit <= 0:
                    return
            for event in read_events(self._audit, since_seq=self._next_seq, limit=limit):
                self._next_seq = int(event.get("seq", self._next_seq)) + 1
                self._verified_mac = str(event.get("mac"))
                self._fold(event)

    def feed(self, events: Iterable[Mapping[str, Any]]) -> None:
        """Fold already-read events (tests, replays); ``refresh`` is the normal path."""
        with self._lock:
            for event in events:
                self._fold(event)

    # -- evidence -> points ---------------------------------------------------------------------
    def _fold(self, e: Mapping[str, Any]) -> None:
        kind, ts = e.get("kind"), e.get("ts")
        if not isinstance(ts, int):
            return
        t = ts / 1e9
        if kind == "decision":
            agent = e.get("agent")
            if not isinstance(agent, str) or not agent:
                return
            if self.config.authenticated_only and not _authenticated(e):
                return  # unauthenticated: neither credit nor blame for the claimed id
            self._remember(str(e.get("id")), agent)
            if isinstance(e.get("approval_id"), str):
                self._remember(e["approval_id"], agent)
            self._apply(agent, t, *self._decision_kind(e))
        elif kind == "outcome":  # one per decision: a repeated report earns nothing more
            status = e.get("status")
            if status in ("succeeded", "failed", "exception"):
                agent = self._owner.pop(str(e.get("decision_id")), None)
                if agent:
                    self._apply(agent, t, f"outcome_{status}", False)
        elif kind == "approval":  # one decision per approval
            if e.get("status") in ("granted", "refused"):
                agent = self._owner.pop(str(e.get("approval_id")), None)
                if agent:
                    self._apply(agent, t, f"approval_{e['status']}", False)
        elif kind == "slo_breach" and isinstance(e.get("agent"), str):
            self._apply(e["agent"], t, "slo_breach", False)
        elif kind == "attestation":
            self._attestation(e.get("attestation"), t)

    def _decision_kind(self, e: Mapping[str, Any]) -> tuple[str, bool]:
        effect, code = e.get("effect"), e.get("code")
        if effect == "allow":
            return "allowed", False
        if effect != "deny":
            return "", False
        rules = set(e.get("rule_ids") or ())
        if code == "policy" and rules:
            if rules & self.config.severe_rules:
                return "severe_violation", True
            return "violation", False
        reasons = e.get("reasons") or ()
        if code == "guard" and not any(str(r).startswith(_PROVEN) for r in reasons):
            # a missing or invalid token proves nothing about who asked: the id is only a claim,
            # so the denial is not held against that agent (it would let anyone sink anyone)
            return "", False
        return {"guard": ("guard_denied", False), "approval": ("approval_refused", False),
                "default": ("denied_default", False), "rate_limit": ("limit_hit", False),
                "budget": ("limit_hit", False), "invalid_tool": ("invalid_tool", False),
                }.get(str(code), ("", False))

    def _attestation(self, att: Any, t: float) -> None:
        try:
            checked = verify_attestation(att)
        except VerificationError:
            return
        if checked["sig"] in self._seen_att:
            return
        subject, issuer = checked["subject"], checked["issuer"]
        if self._registry is None:
            return  # without a registry no issuer can be told from a stranger: not evidence
        who = self._registry.by_did(issuer)
        # the key as it stood when the attestation was recorded (a later rotation does not
        # undo it); a registry without key history can only say what the key is now
        current_at = getattr(self._registry, "key_current_at", None)
        current = current_at(issuer, t) if callable(current_at) \
            else self._registry.is_current_key(issuer)
        if who is None or not who.active or who.agent_id == subject or not current:
            return  # unknown, revoked, retired key or self-attestation: not evidence
        # the issuer's standing when it attested, not when the log is read: the same log
        # gives the same evidence whenever (and by whichever process) it is read
        if self._report(who.agent_id, at=t).score < self.config.min_attester_trust:
            return  # an untrusted agent's word moves no one's trust
        period = (who.agent_id, subject, int(t // self.config.period_s))
        if period in self._att_periods:
            return
        self._att_periods.add(period)
        self._seen_att.add(checked["sig"])
        kind = f"{checked['kind']}_attestation"
        weight = checked["weight"] if kind != "severe_attestation" else 1
        self._apply(subject, t, kind, kind == "severe_attestation", weight)

    def _remember(self, key: str, agent: str) -> None:
        self._owner[key] = agent
        if len(self._owner) > 200_000:
            self._owner.pop(next(iter(self._owner)))

    def _apply(self, agent_id: str, t: float, kind: str, severe: bool, weight: int = 1) -> None:
        if not kind:
            return
        cfg = self.config
        a = self._agents.setdefault(agent_id, _Agent())
        a.events += 1
        if a.last is not None and t > a.last:  # step 1
            before = a.delta
            a.delta *= 0.5 ** ((t - a.last) / cfg.half_life_s)
            a.decay += a.delta - before
        a.last = t if a.last is None else max(a.last, t)
        period = int(t // cfg.period_s)  # step 2
        if period > a.period:  # only a later period opens a fresh cap;
            a.period, a.period_gain, a.period_violation = period, 0.0, False  # late events
            # (clock skew, two writers) count against the current one
        points = cfg.value(kind) * weight
        applied = 0.0
        if points > 0:  # step 3
            room = 0.0 if a.period_violation else cfg.max_gain_per_period - a.period_gain
            applied = max(0.0, min(float(points), room))
            a.period_gain += applied
        if kind in _VIOLATIONS:  # step 4
            a.period_violation = True
        score = cfg.prior + a.delta
        if severe:  # step 5
            a.severe += 1
            floor = tier_floor(round(score))
            score = min(score, floor - 1.0)
        if points < 0:
            applied = float(points)
        new = min(1000.0, max(0.0, score + applied))  # step 6
        entry = a.contrib.setdefault(kind, [0, 0, 0.0])
        entry[0] += 1
        entry[1] += points
        entry[2] += new - (cfg.prior + a.delta)
        a.delta = new - cfg.prior

    # -- reading --------------------------------------------------------------------------------
    def report(self, agent_id: str) -> TrustReport:
        """The agent's score now (decayed to the clock), with its breakdown."""
        with self._lock:
            return self._report(agent_id)

    def _report(self, agent_id: str, at: float | None = None) -> TrustReport:
        cfg = self.config
        a = self._agents.get(agent_id)
        if a is None:
            name, ring = tier_of(cfg.prior)
            return TrustReport(agent_id, cfg.prior, name, ring, cfg.prior, (), 0.0, 0, 0)
        delta, decay = a.delta, a.decay
        now = self._clock() if at is None else at
        if a.last is not None and now > a.last:
            delta = a.delta * 0.5 ** ((now - a.last) / cfg.half_life_s)
            decay += delta - a.delta
        score = round(min(1000.0, max(0.0, cfg.prior + delta)))
        parts = tuple(Contribution(k, int(v[0]), int(v[1]), v[2])
                      for k, v in sorted(a.contrib.items()))
        name, ring = tier_of(score)
        return TrustReport(agent_id, score, name, ring, cfg.prior, parts, decay, a.severe,
                           a.events)

    def score(self, agent_id: str) -> int:
        return self.report(agent_id).score


def tier_floor(score: int) -> int:
    """The lowest score of ``score``'s tier (a severe event drops below it)."""
    low = 0
    for _, floor, _ in TIERS:
        if score >= floor:
            low = floor
    return low
