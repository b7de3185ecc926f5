"""Ring enforcement through the kernel, and elevation grants."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion import Action, ConfigError, Kernel
from bastion.audit import read_events
from bastion.flow import parse_catalog
from bastion.runtime._rings import RingGuard

CATALOG = parse_catalog("version: 1\ntools:\n  read_inbox: {class: read}\n"
                        "  send_email: {class: egress}\n  rotate_keys: {class: admin}\n")
POLICY = "version: 1\nrules:\n  - {id: all, effect: allow}\n"


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_elevation_is_time_boxed_approved_and_audited(tmp_path: Path) -> None:
    clock = Clock()
    rings = {"agent-1": 3}
    with Kernel.from_text(POLICY, audit=tmp_path / "a.db", state=tmp_path / "s.db",
                          catalog=CATALOG) as kernel:
        guard = RingGuard(CATALOG, ring_of=rings.get, state=kernel.state, audit=kernel.audit,
                          clock=clock)
        kernel.add_guard(guard)
        send = Action(tool="send_email", agent={"id": "agent-1"})
        assert kernel.evaluate(send).code == "guard"
        for bad in ({"approved_by": "agent-1"}, {"approved_by": ""}, {"approved_by": "AGENT-1"},
                    {"approved_by": " agent-1\u200b"}):
            with pytest.raises(ConfigError):
                guard.elevate("agent-1", 1, seconds=60, reason="incident", **bad)
        with pytest.raises(ConfigError):
            guard.elevate("agent-1", 1, seconds=10**7, approved_by="lead", reason="x")
        grant = guard.elevate("agent-1", 1, seconds=60, approved_by="lead", reason="incident")
        assert grant.ring == 1 and guard.ring("agent-1") == 1
        assert kernel.evaluate(send).allowed
        assert kernel.evaluate(Action(tool="rotate_keys", agent={"id": "agent-1"})).code == \
            "guard"
        clock.now += 61
        assert guard.ring("agent-1") == 3 and kernel.evaluate(send).code == "guard"
        guard.elevate("agent-1", 1, seconds=60, approved_by="lead", reason="again")
        assert guard.revoke("agent-1", by="lead") and guard.ring("agent-1") == 3
        kernel.audit.flush()
        kinds = [e["kind"] for e in read_events(tmp_path / "a.db")]
        assert kinds.count("ring.elevate") == 2 and kinds.count("ring.revoke") == 1


def test_ring_table_must_be_complete() -> None:
    from bastion.state import open_store

    with pytest.raises(ConfigError):
        RingGuard(CATALOG, ring_of=lambda a: 0, state=open_store(None),
                  rings={0: frozenset({"read"})})
