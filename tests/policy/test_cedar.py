"""Cedar policies: same Decision semantics, fail closed on errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bastion import Action, Kernel, PolicyError

CEDAR = """\
@id("block-drop")
forbid(principal, action == Action::"drop_table", resource);
@id("mail")
permit(principal, action == Action::"send_email", resource)
when { context.args.to like "*@example.com" };
@id("big")
@approval("payments over 1000 need a human")
permit(principal, action == Action::"transfer", resource) when { context.args.amount > 1000 };
@id("small")
permit(principal, action == Action::"transfer", resource) when { context.args.amount <= 1000 };
@id("eur-only")
forbid(principal, action == Action::"transfer", resource) when { context.args.currency != "EUR" };
@id("admins")
permit(principal, action == Action::"admin_tool", resource)
when { principal.roles.contains("admin") };
"""


@pytest.fixture
def kernel() -> Any:
    facts = {"root": {"roles": ["admin"], "trust": 900}}
    with Kernel.from_text(CEDAR, format="cedar", audit=False,
                          agent_facts=lambda a: facts.get(a, {"roles": []})) as k:
        yield k


@pytest.mark.parametrize(
    ("action", "effect", "rules"),
    [
        (Action(tool="transfer", args={"amount": 5, "currency": "EUR"}), "allow", ("small",)),
        (Action(tool="transfer", args={"amount": 5000, "currency": "EUR"}), "require_approval",
         ("big",)),
        (Action(tool="transfer", args={"amount": 5000, "currency": "USD"}), "deny",
         ("eur-only",)),
        (Action(tool="DROP_TABLE"), "deny", ("block-drop",)),
        (Action(tool="send_email", args={"to": "a@example.com"}), "allow", ("mail",)),
        (Action(tool="send_email", args={"to": "a@evil.com"}), "deny", ()),
        (Action(tool="admin_tool", agent={"id": "root"}), "allow", ("admins",)),
        (Action(tool="admin_tool", agent={"id": "bob", "roles": ["admin"]}), "deny", ()),
    ],
)
def test_cedar_decisions(kernel: Kernel, action: Action, effect: str,
                         rules: tuple[str, ...]) -> None:
    d = kernel.evaluate(action)
    assert (d.effect, d.rule_ids) == (effect, rules)


def test_an_erroring_forbid_denies_instead_of_being_skipped(kernel: Kernel) -> None:
    d = kernel.evaluate(Action(tool="transfer", args={"amount": 5}))  # no currency
    assert d.effect == "deny" and d.rule_ids == ("eur-only",) and d.errors


def test_unrepresentable_values_deny(kernel: Kernel) -> None:
    d = kernel.evaluate(Action(tool="transfer", args={"amount": 2**70, "currency": "EUR"}))
    assert d.effect == "deny" and d.errors


def test_cedar_parse_errors_have_positions(tmp_path: Path) -> None:
    f = tmp_path / "p.cedar"
    f.write_text('permit(principal, action, resource);\n\nforbid(principal, actoin, resource);\n')
    with pytest.raises(PolicyError) as info:
        Kernel.from_policy(f)
    assert (info.value.line, info.value.column) == (3, 1)
    assert "actoin" in info.value.message
