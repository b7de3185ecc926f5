"""Review 3 of the kernel, the policy engine and the CLI.

Each test states what DESIGN.md / README.md promise; each failed before its fix.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bastion import Action, GovernanceDenied, Kernel, PolicyError, govern
from bastion.policy import parse_policy

# -- redaction --------------------------------------------------------------------------------

REDACT_CARD = """\
version: 1
rules:
  - id: ok
    effect: allow
  - id: mask-card
    effect: redact
    redact: [args.card.number]
"""


@dataclasses.dataclass
class Card:
    number: str
    holder: str


def test_redact_path_reaches_the_fields_of_a_dataclass_argument() -> None:
    with Kernel.from_text(REDACT_CARD, audit=False) as kernel:
        d = kernel.evaluate(Action(tool="pay", args={"card": Card("4111111111111111", "Ann")}))
    assert d.allowed and d.redacted
    assert "4111111111111111" not in repr(d.args)


REDACT_ALL_ARGS = """\
version: 1
rules:
  - id: ok
    effect: allow
  - id: mask-all
    tools: [send_email]
    effect: redact
    redact: [args]
"""


def test_redacting_all_arguments_never_passes_the_originals_to_a_governed_tool() -> None:
    with Kernel.from_text(REDACT_ALL_ARGS, audit=False) as kernel:
        @govern(kernel)
        def send_email(to: str, body: str) -> tuple[str, str]:
            return to, body

        try:
            got = send_email("ops@example.com", "card 4111111111111111")
        except GovernanceDenied:
            return  # failing closed is fine too
    assert "4111111111111111" not in repr(got)


# -- govern: results that are awaitables --------------------------------------------------------

POST_REDACT = """\
version: 1
rules:
  - id: ok
    effect: allow
  - id: ok-results
    stage: post_tool
    effect: allow
  - id: mask-secret
    stage: post_tool
    effect: redact
    redact_pattern: 'hunter2'
"""


class _AsyncFetch:
    """An async tool as an object (``async def __call__``): ``inspect.iscoroutinefunction``
    is false for the instance, so ``govern`` takes its sync path."""

    async def __call__(self, url: str) -> str:
        return "the password is hunter2"


def test_a_governed_callable_that_returns_a_coroutine_has_its_result_checked() -> None:
    with Kernel.from_text(POST_REDACT, audit=False) as kernel:
        fetch = govern(kernel, name="fetch")(_AsyncFetch())

        async def call() -> Any:
            return await fetch("https://example.com")

        try:
            got = asyncio.run(call())
        except (GovernanceDenied, TypeError):
            return  # refusing such a callable is fine too
    assert "hunter2" not in repr(got)


# -- approvals ----------------------------------------------------------------------------------

POST_APPROVAL = """\
version: 1
rules:
  - id: ok
    effect: allow
  - id: ok-results
    stage: post_tool
    effect: allow
  - id: review-results
    stage: post_tool
    tools: [read_file]
    when: result.contains('CONFIDENTIAL')
    effect: require_approval
"""


def test_a_post_tool_approval_is_bound_to_the_result_that_was_approved() -> None:
    base: dict[str, Any] = {"tool": "read_file", "stage": "post_tool",
                            "args": {"path": "report.txt"}, "agent": {"id": "a1"},
                            "session": {"id": "s1"}}
    with Kernel.from_text(POST_APPROVAL, audit=False) as kernel:
        first = kernel.evaluate(Action(result="CONFIDENTIAL: q3 summary", **base))
        assert first.effect == "require_approval" and first.approval_id
        kernel.approve(first.approval_id, by="lead")
        other = kernel.evaluate(Action(result="CONFIDENTIAL: every customer's card number",
                                       approval=first.approval_id, **base))
    assert not other.allowed


# -- the loader ---------------------------------------------------------------------------------

@pytest.mark.parametrize("written", ["0100", "1:30"])
def test_a_budget_means_the_number_written(written: str) -> None:
    text = f"version: 1\nbudgets: {{max_repeats: {written}}}\nrules: []\n"
    try:
        policy = parse_policy(text, path="p.yaml")
    except PolicyError:
        return  # refusing the spelling is fine
    assert written.isdigit() and policy.budgets.max_repeats == int(written, 10)


def test_condition_error_column_in_a_block_line_indented_further(tmp_path: Path) -> None:
    text = ("version: 1\n"
            "rules:\n"
            "  - id: r\n"
            "    effect: deny\n"
            "    when: |\n"
            "      args.a == 1 &&\n"
            "        args.b == ]\n")
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        parse_policy(text, path=str(path))
    line = text.splitlines()[6]
    assert (info.value.line, info.value.column) == (7, line.index("]") + 1)


def test_cedar_approval_on_a_forbid_names_its_line() -> None:
    from bastion.policy._cedar import CedarPolicy

    text = ('permit(principal, action, resource);\n'
            '\n'
            '@id("x")\n'
            '@approval("why")\n'
            'forbid(principal, action == Action::"drop_table", resource);\n')
    with pytest.raises(PolicyError) as info:
        CedarPolicy(text, "p.cedar")
    assert info.value.line in (3, 4, 5)
