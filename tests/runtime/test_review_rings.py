"""Review of rings (issue 6): the ring comes from the trust layer only, and an elevation is
approved, time-boxed, bound to one agent and not stretched by another process's clock."""

from __future__ import annotations

import json
import math

import pytest

from bastion import Action, ConfigError, Kernel
from bastion.audit import AuditLog
from bastion.flow import parse_catalog
from bastion.runtime import RingGuard
from bastion.runtime._rings import ELEVATION_SKEW_S
from bastion.state import StateStore, open_store

CATALOG = parse_catalog("version: 1\ntools:\n  read_inbox: {class: read}\n"
                        "  send_email: {class: egress}\n  rotate_keys: {class: admin}\n")
POLICY = "version: 1\nrules:\n  - {id: all, effect: allow}\n"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _kernel(ring_of: dict[str, int], clock: Clock) -> tuple[Kernel, RingGuard]:
    kernel = Kernel.from_text(POLICY, catalog=CATALOG)
    guard = RingGuard(CATALOG, ring_of=ring_of.get, state=kernel.state, audit=kernel.audit,
                      clock=clock)
    kernel.add_guard(guard)
    return kernel, guard


def _code(kernel: Kernel, tool: str, agent: object, **extra: object) -> str:
    d = kernel.evaluate(Action(tool=tool, agent=agent, **extra))  # type: ignore[arg-type]
    return "allow" if d.allowed else d.code


def test_the_request_cannot_raise_its_own_ring() -> None:
    kernel, _ = _kernel({"bot": 3}, Clock())
    with kernel:
        for agent in ({"id": "bot", "ring": 0}, {"id": "bot", "ring": "0", "trust": 1.0},
                      {"id": "bot", "roles": ["admin"], "elevation": {"ring": 0}}):
            assert _code(kernel, "send_email", agent) == "guard"
        assert _code(kernel, "rotate_keys", {"id": "bot"}, args={"ring": 0},
                     context={"ring": 0, "elevation": {"agent": "bot", "ring": 0}}) == "guard"
        assert _code(kernel, "read_inbox", {"id": "bot", "ring": 0}) == "allow"


def test_undeclared_and_respelled_tools_get_no_more_than_their_class() -> None:
    kernel, _ = _kernel({"ops": 1, "root": 0}, Clock())
    with kernel:
        for tool in ("Rotate_Keys", "ROTATE\u200b_KEYS", "rotate_keys\u00ad", "format_disk"):
            assert _code(kernel, tool, {"id": "ops"}) == "guard", tool
        assert _code(kernel, "ＳＥＮＤ_EMAIL", {"id": "ops"}) == "allow"  # fullwidth: NFKC
        assert _code(kernel, "format_disk", {"id": "root"}) == "allow"  # ring 0: undeclared ok
        assert _code(kernel, "format_disk", {"id": "nobody-knows-me"}) == "guard"  # ring 3


def test_an_elevation_is_for_its_agent_only() -> None:
    clock = Clock()
    kernel, guard = _kernel({"agent-1": 3, "agent-2": 3}, clock)
    with kernel:
        guard.elevate("agent-1", 1, seconds=60, approved_by="lead", reason="incident")
        assert _code(kernel, "send_email", {"id": "agent-1"}) == "allow"
        for other in ("agent-2", "Agent-1", "agent-1 ", "agent-1\u200b", ""):
            assert _code(kernel, "send_email", {"id": other}) == "guard", other
        # a grant copied under another agent's key (by anything that can write the store)
        # names agent-1: it grants agent-2 nothing
        raw = kernel.state.flags()["elevation:agent-1"]
        kernel.state.set_flag("elevation:agent-2", raw)
        assert guard.ring("agent-2") == 3
        assert _code(kernel, "send_email", {"id": "agent-2"}) == "guard"


def test_no_elevation_without_an_approver_a_reason_and_an_agent() -> None:
    _, guard = _kernel({}, Clock())
    ok: dict[str, object] = {"seconds": 60, "approved_by": "lead", "reason": "incident"}
    for agent, ring, changes in (
            ("bot", 1, {"approved_by": " "}), ("bot", 1, {"approved_by": "BOT\u200b"}),
            ("bot", 1, {"reason": ""}), ("", 1, {}), ("bot", True, {}), ("bot", 3, {}),
            ("bot", -1, {}), ("bot", 1, {"seconds": 0}), ("bot", 1, {"seconds": math.nan}),
            ("bot", 1, {"seconds": math.inf}), ("bot", 1, {"seconds": 24 * 3600 + 1})):
        with pytest.raises(ConfigError):
            guard.elevate(agent, ring, **{**ok, **changes})  # type: ignore[arg-type]
    assert guard.elevation("") is None and guard.elevation("bot") is None


def test_an_elevation_ends_at_expiry_and_is_not_stretched_by_a_slow_clock() -> None:
    state = open_store(None)
    granting, behind, slightly = Clock(), Clock(T0 - 3600), Clock(T0 - ELEVATION_SKEW_S / 2)

    log = AuditLog.open(None)

    def guard(clock: Clock) -> RingGuard:
        return RingGuard(CATALOG, ring_of=lambda agent: 3, state=state, audit=log, clock=clock)

    guard(granting).elevate("bot", 1, seconds=60, approved_by="lead", reason="incident")
    assert guard(granting).ring("bot") == 1
    assert guard(slightly).ring("bot") == 1  # within the tolerated skew
    # a process whose clock is an hour behind would otherwise honour it for an hour more
    assert guard(behind).ring("bot") == 3
    granting.now += 60
    assert guard(granting).ring("bot") == 3  # expires at exactly granted + seconds


def _forge(state: StateStore, **fields: object) -> None:
    grant = {"agent": "bot", "ring": 1, "expires": T0 + 60, "approved_by": "lead",
             "reason": "r", "granted": T0, **fields}
    state.set_flag("elevation:bot", json.dumps(grant))


def test_a_damaged_or_hand_written_grant_grants_nothing() -> None:
    clock = Clock()
    kernel, guard = _kernel({"bot": 3}, clock)
    with kernel:
        _forge(kernel.state)
        assert guard.ring("bot") == 1  # the well-formed control
        for bad in ({"ring": True}, {"ring": 0.0}, {"ring": "0"}, {"ring": -1}, {"ring": 3},
                    {"expires": "never"}, {"expires": T0 + 10**9}, {"granted": "yesterday"},
                    {"granted": T0 - 10**6}, {"granted": None, "expires": T0 + 10**9},
                    {"agent": "someone-else"}, {"extra": 1}):
            _forge(kernel.state, **bad)
            assert guard.ring("bot") == 3, bad
            assert _code(kernel, "send_email", {"id": "bot"}) == "guard", bad
        kernel.state.set_flag("elevation:bot", "{not json")
        assert guard.ring("bot") == 3
        _forge(kernel.state, granted=None)  # hand-written without "granted": until expiry
        assert guard.ring("bot") == 1
        clock.now = T0 + 60
        assert guard.ring("bot") == 3
