"""The audit event of a decision records the agent facts it read (trust, ring, roles), as the
provider answered at decision time, so the decision can be explained afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion import Action, Kernel
from bastion.audit import read_events

POLICY = """\
version: 1
rules:
  - {id: trusted, tools: [pay], when: 'agent.trust >= 0.8 && "payments" in agent.roles',
     effect: allow}
"""


def _events(path: Path) -> list[dict[str, Any]]:
    return [e for e in read_events(path) if e.get("kind") == "decision"]


def test_the_facts_a_decision_read_are_in_its_audit_event(tmp_path: Path) -> None:
    facts = {"bot": {"trust": 0.9, "roles": ["payments"]}}
    with Kernel.from_text(POLICY, audit=tmp_path / "a.db",
                          agent_facts=lambda agent: facts[agent]) as kernel:
        assert kernel.evaluate(Action(tool="pay", agent={"id": "bot"})).allowed
        facts["bot"] = {"trust": 0.1, "roles": []}  # the provider changes its mind later
        assert not kernel.evaluate(Action(tool="pay", agent={"id": "bot"})).allowed
    first, second = _events(tmp_path / "a.db")
    assert first["agent_facts"] == {"trust": 0.9, "roles": ["payments"]}
    assert second["agent_facts"] == {"trust": 0.1, "roles": []}


def test_no_facts_are_recorded_when_none_were_read(tmp_path: Path) -> None:
    policy = "version: 1\nrules:\n  - {id: all, effect: allow}\n"
    with Kernel.from_text(policy, audit=tmp_path / "a.db",
                          agent_facts=lambda agent: {"trust": 1.0}) as kernel:
        kernel.evaluate(Action(tool="pay", agent={"id": "bot"}))
    (event,) = _events(tmp_path / "a.db")
    assert "agent_facts" not in event
