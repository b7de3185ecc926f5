"""Kernel semantics: combining, fail-closed paths, approvals, limits, budgets, kill switch,
redaction, audit integration and concurrency."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bastion import Action, ApprovalError, ConfigError, Kernel
from bastion.audit import read_events, verify
from bastion.state import open_store

POLICY = """\
version: 1
rules:
  - id: no-drop
    tools: ["drop_*"]
    effect: deny
    message: destructive operations are blocked
  - id: big
    tools: [transfer]
    when: args.amount > 1000
    effect: require_approval
  - id: transfers
    tools: [transfer]
    effect: allow
  - id: admin
    tools: [admin_panel]
    when: "'admin' in agent.roles"
    effect: allow
  - id: mail
    tools: [send_email]
    effect: allow
    limit: 2/minute
    per: agent
  - id: mask
    tools: [send_email]
    effect: redact
    redact: [args.password]
  - id: results
    stage: post_tool
    tools: [fetch]
    effect: allow
  - id: scrub
    stage: post_tool
    tools: [fetch]
    effect: redact
    redact_pattern: 'secret-[0-9]+'
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * 10**9

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


@pytest.fixture
def kernel() -> Any:
    with Kernel.from_text(POLICY, audit=False) as k:
        yield k


def test_allow_deny_and_default(kernel: Kernel) -> None:
    d = kernel.evaluate(Action(tool="transfer", args={"amount": 5}))
    assert d.allowed and d.effect == "allow" and d.rule_ids == ("transfers",) and d.code == "policy"
    d = kernel.evaluate(Action(tool="drop_users"))
    assert d.effect == "deny" and d.rule_ids == ("no-drop",)
    assert d.reasons == ("destructive operations are blocked",)
    d = kernel.evaluate(Action(tool="unknown_tool"))
    assert d.effect == "deny" and d.code == "default" and d.rule_ids == ()


def test_decision_ids_are_unique_and_stamped_once(kernel: Kernel) -> None:
    ids = {kernel.evaluate(Action(tool="transfer", args={"amount": 1})).id for _ in range(500)}
    assert len(ids) == 500


@pytest.mark.parametrize("name", ["DROP_users", "drop\u200b_users", "ｄｒｏｐ_users",
                                  "drop_users\u202e", " drop_users "])
def test_tool_name_tricks_still_hit_the_rule(kernel: Kernel, name: str) -> None:
    d = kernel.evaluate(Action(tool=name))
    assert d.effect == "deny" and d.rule_ids == ("no-drop",)


@pytest.mark.parametrize("name", ["drоp_users", "drop users", "drop_users;rm", "", None, 7])
def test_invalid_tool_names_are_denied(kernel: Kernel, name: Any) -> None:
    d = kernel.evaluate(Action(tool=name))
    assert d.effect == "deny" and d.code in ("invalid_tool", "missing_tool")


def test_bad_stage_and_identity_are_denied(kernel: Kernel) -> None:
    assert kernel.evaluate(Action(tool="transfer", stage="before")).code == "invalid_stage"
    d = kernel.evaluate(Action(tool="transfer", agent={"id": 42}))
    assert d.code == "invalid_identity" and not d.allowed


def test_condition_error_matches_approval_rule_and_is_recorded(kernel: Kernel) -> None:
    d = kernel.evaluate(Action(tool="transfer", args={"amount": "lots"}))
    assert d.effect == "require_approval" and d.rule_ids == ("big",)
    assert d.errors and "big" in d.errors[0]


def test_roles_come_from_facts_never_from_the_caller() -> None:
    facts = {"root": {"roles": ["admin"]}}
    with Kernel.from_text(POLICY, audit=False, agent_facts=lambda a: facts.get(a, {"roles": []})
                          ) as k:
        assert k.evaluate(Action(tool="admin_panel", agent={"id": "root"})).allowed
        forged = k.evaluate(Action(tool="admin_panel", agent={"id": "bob", "roles": ["admin"]}))
        assert not forged.allowed


def test_failing_fact_provider_fails_closed() -> None:
    def broken(agent_id: str) -> dict[str, Any]:
        raise RuntimeError("trust service down")

    with Kernel.from_text(POLICY, audit=False, agent_facts=broken) as k:
        d = k.evaluate(Action(tool="admin_panel", agent={"id": "root"}))
        assert d.effect == "deny" and d.code == "internal_error"
        assert "trust service down" in d.errors[0]


def test_redaction_of_arguments_and_results(kernel: Kernel) -> None:
    args = {"to": "a@b.c", "password": "hunter2"}
    d = kernel.evaluate(Action(tool="send_email", args=args, agent={"id": "r"}))
    assert d.allowed and d.redacted and d.args == {"to": "a@b.c", "password": "[REDACTED]"}
    assert args["password"] == "hunter2"  # the caller's mapping is never modified
    d = kernel.evaluate(Action(tool="fetch", stage="post_tool",
                               result={"body": "key secret-123 here", "n": [1, "secret-9"]}))
    assert d.allowed and d.result == {"body": "key [REDACTED] here", "n": [1, "[REDACTED]"]}


def test_rate_limit_survives_a_new_kernel_sharing_the_state(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    call = Action(tool="send_email", args={"to": "x"}, agent={"id": "a1"})
    with Kernel.from_text(POLICY, audit=False, state=state) as k1:
        assert k1.evaluate(call).allowed and k1.evaluate(call).allowed
        third = k1.evaluate(call)
        assert third.code == "rate_limit" and "2/minute" in third.reasons[0]
    with Kernel.from_text(POLICY, audit=False, state=state) as k2:
        assert k2.evaluate(call).code == "rate_limit"  # a new kernel does not reset the count
        other = Action(tool="send_email", args={"to": "x"}, agent={"id": "a2"})
        assert k2.evaluate(other).allowed  # counted per agent


def test_rate_limit_window_rolls_over() -> None:
    clock = Clock()
    with Kernel.from_text(POLICY, audit=False, clock=clock) as k:
        call = Action(tool="send_email", agent={"id": "a"})
        assert [k.evaluate(call).allowed for _ in range(3)] == [True, True, False]
        clock.advance(61)
        assert k.evaluate(call).allowed


def test_session_call_budget() -> None:
    text = "version: 1\nbudgets: {session_calls: 3}\nrules:\n  - {id: all, effect: allow}\n"
    with Kernel.from_text(text, audit=False) as k:
        s1 = [k.evaluate(Action(tool="t", session={"id": "s1"})) for _ in range(4)]
        assert [d.allowed for d in s1] == [True, True, True, False]
        assert s1[-1].code == "budget"
        assert k.evaluate(Action(tool="t", session={"id": "s2"})).allowed


def test_approval_is_bound_to_the_exact_action_and_single_use(kernel: Kernel) -> None:
    action = Action(tool="transfer", args={"amount": 5000}, agent={"id": "a"})
    pending = kernel.evaluate(action)
    assert pending.effect == "require_approval" and pending.approval_id
    aid = pending.approval_id
    assert kernel.evaluate(action._replace(approval=aid)).effect == "deny"  # not granted yet
    assert [a.id for a in kernel.pending_approvals()] == [aid]
    granted = kernel.approve(aid, by="alice")
    assert granted.status == "granted" and granted.decided_by == "alice"
    other = action._replace(args={"amount": 5001}, approval=aid)
    assert kernel.evaluate(other).effect == "deny"  # another action cannot use it
    ok = kernel.evaluate(action._replace(approval=aid))
    assert ok.allowed and ok.approval_id == aid and ok.rule_ids == ("big",)
    assert kernel.evaluate(action._replace(approval=aid)).effect == "deny"  # single use
    with pytest.raises(ApprovalError, match="already"):
        kernel.approve(aid, by="bob")


def test_approval_expiry_and_refusal() -> None:
    clock = Clock()
    with Kernel.from_text(POLICY, audit=False, clock=clock, approval_ttl_s=60) as k:
        action = Action(tool="transfer", args={"amount": 5000})
        aid = k.evaluate(action).approval_id
        assert aid is not None
        clock.advance(61)
        with pytest.raises(ApprovalError, match="expired"):
            k.approve(aid, by="alice")
        aid2 = k.evaluate(action).approval_id
        assert aid2 is not None
        k.approve(aid2, by="alice")
        clock.advance(61)
        assert k.evaluate(action._replace(approval=aid2)).effect == "deny"  # granted, expired
        aid3 = k.evaluate(action).approval_id
        assert aid3 is not None
        k.refuse(aid3, by="carol")
        assert k.evaluate(action._replace(approval=aid3)).effect == "deny"
        with pytest.raises(ApprovalError):
            k.approve("apr-nope", by="alice")
        with pytest.raises(ApprovalError):
            k.approve(aid3, by="")


@pytest.mark.parametrize(("answer", "effect"), [(True, "allow"), (False, "deny"),
                                                ("yes", "deny"), (RuntimeError, "deny")])
def test_approver_callback(answer: Any, effect: str) -> None:
    def approver(approval: Any, action: Action) -> Any:
        assert approval.tool == "transfer" and action.args["amount"] == 5000
        if answer is RuntimeError:
            raise RuntimeError("pager down")
        return answer

    with Kernel.from_text(POLICY, audit=False, approver=approver) as k:
        assert k.evaluate(Action(tool="transfer", args={"amount": 5000})).effect == effect


def test_approve_from_another_process_via_the_cli(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    with Kernel.from_text(POLICY, audit=False, state=state) as k:
        action = Action(tool="transfer", args={"amount": 9000})
        aid = k.evaluate(action).approval_id
        assert aid is not None
        cli = Path(sys.executable).with_name("bastion")
        run = subprocess.run([str(cli), "approve", aid, "--state", str(state), "--by", "ops"],
                             capture_output=True, text=True, check=False)
        assert run.returncode == 0, run.stderr
        assert k.evaluate(action._replace(approval=aid)).allowed


def test_kill_switch_flags(tmp_path: Path) -> None:
    state_path = tmp_path / "state.db"
    with Kernel.from_text(POLICY, audit=False, state=state_path) as k:
        call = Action(tool="transfer", args={"amount": 1}, agent={"id": "a1"},
                      session={"id": "s1"})
        assert k.evaluate(call).allowed
        other = open_store(state_path)  # another handle on the same file, as another process
        for key in ("kill:agent:a1", "kill:session:s1", "kill:tool:transfer", "kill:all"):
            other.set_flag(key, "incident 42")
            d = k.evaluate(call)
            assert d.effect == "deny" and d.code == "kill_switch", key
            other.clear_flag(key)
            assert k.evaluate(call).allowed
        other.close()


def test_audit_records_every_decision_and_verifies(tmp_path: Path) -> None:
    log = tmp_path / "audit.db"
    with Kernel.from_text(POLICY, audit=log) as k:
        args = {"amount": 5, "meta": {"tags": ["a"]}}
        d = k.evaluate(Action(tool="Transfer", args=args, agent={"id": "a"},
                              session={"id": "s"}))
        args["meta"]["tags"].append("changed-after")  # must not reach the audit log
        k.evaluate(Action(tool="drop_x"))
    report = verify(log)
    assert report.ok and report.entries >= 2
    events = list(read_events(log))
    first = events[0]
    assert first["id"] == d.id and first["tool"] == "transfer" and first["tool_raw"] == "Transfer"
    assert first["effect"] == "allow" and first["rule_ids"] == ["transfers"]
    assert first["args"] == {"amount": 5, "meta": {"tags": ["a"]}}
    assert first["action"].startswith("sha256:") and first["policy"] == d.policy
    assert first["agent"] == "a" and first["session"] == "s" and first["v"] == 1
    assert events[1]["effect"] == "deny"


def test_unwritable_audit_denies() -> None:
    class Broken:
        def append(self, body: Any) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            pass

    with Kernel.from_text(POLICY, audit=Broken()) as k:
        d = k.evaluate(Action(tool="transfer", args={"amount": 1}))
        assert d.effect == "deny" and d.code == "audit_unavailable"


def test_eight_threads_one_kernel_no_event_lost(tmp_path: Path) -> None:
    log = tmp_path / "audit.db"
    per_thread = 250
    with Kernel.from_text(POLICY, audit=log) as k:
        def work(n: int) -> None:
            for i in range(per_thread):
                k.evaluate(Action(tool="transfer", args={"amount": i}, agent={"id": f"t{n}"}))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    report = verify(log)
    assert report.ok and report.entries == 8 * per_thread
    ids = {e["id"] for e in read_events(log)}
    assert len(ids) == 8 * per_thread


def test_async_evaluate(kernel: Kernel) -> None:
    async def main() -> list[str]:
        calls = [kernel.aevaluate(Action(tool="transfer", args={"amount": a}))
                 for a in (1, 5000)]
        return [d.effect for d in await asyncio.gather(*calls)]

    assert asyncio.run(main()) == ["allow", "require_approval"]


CATALOG = """\
version: 1
tools:
  send_email: {class: egress, sinks: [to, body]}
  read_inbox: {class: read, result: {integrity: untrusted, confidentiality: internal}}
"""


def test_catalog_facts_reach_conditions(tmp_path: Path) -> None:
    policy = """\
version: 1
rules:
  - {id: no-egress, when: "tool_info['class'] == 'egress'", effect: require_approval}
  - {id: undeclared, when: "!tool_info.declared", effect: deny}
  - {id: all, effect: allow}
"""
    (tmp_path / "tools.yaml").write_text(CATALOG)
    for catalog in (CATALOG, tmp_path / "tools.yaml", str(tmp_path / "tools.yaml")):
        with Kernel.from_text(policy, audit=False, catalog=catalog) as k:
            assert k.evaluate(Action(tool="Read_Inbox")).allowed
            assert k.evaluate(Action(tool="send_email")).effect == "require_approval"
            assert k.evaluate(Action(tool="format_disk")).rule_ids == ("undeclared",)


def test_missing_catalog_file_is_an_error(tmp_path: Path) -> None:
    from bastion import PolicyError

    with pytest.raises(PolicyError, match="file not found"):
        Kernel.from_text(POLICY, catalog=tmp_path / "missing.yaml")


def test_guards_run_before_the_policy_and_fail_closed() -> None:
    seen: list[tuple[str, str]] = []

    def only_agent_a(action: Action, tool: str, agent_id: str) -> str | None:
        seen.append((tool, agent_id))
        return None if agent_id == "a" else "token does not cover this agent"

    def broken(action: Action, tool: str, agent_id: str) -> str | None:
        raise RuntimeError("verifier down")

    with Kernel.from_text(POLICY, audit=False, guards=[only_agent_a]) as k:
        assert k.evaluate(Action(tool="Transfer", args={"amount": 1}, agent={"id": "a"})).allowed
        d = k.evaluate(Action(tool="transfer", args={"amount": 1}, agent={"id": "b"}))
        assert d.code == "guard" and "does not cover" in d.reasons[0]
        assert seen == [("transfer", "a"), ("transfer", "b")]
    with Kernel.from_text(POLICY, audit=False, guards=[broken]) as k:
        d = k.evaluate(Action(tool="transfer", args={"amount": 1}))
        assert d.code == "guard" and "verifier down" in d.errors[0]


BUDGETS = """\
version: 1
budgets: {session_cost: 1.5, session_tokens: 1000, max_repeats: 3, max_failures: 2}
rules:
  - {id: all, effect: allow}
"""


def test_cost_and_token_budgets() -> None:
    with Kernel.from_text(BUDGETS, audit=False) as k:
        call = Action(tool="ask_model", args={"q": 1}, session={"id": "s"})
        assert k.evaluate(call).allowed
        k.report_usage("s", cost=1.0, tokens=400)
        assert k.evaluate(call._replace(args={"q": 2})).allowed
        k.report_usage("s", cost=0.6)
        d = k.evaluate(call._replace(args={"q": 3}))
        assert d.code == "budget" and "cost" in d.reasons[0]
        assert k.evaluate(call._replace(session={"id": "other"})).allowed
        k.report_usage("t", tokens=1000)
        d = k.evaluate(call._replace(session={"id": "t"}))
        assert d.code == "budget" and "token" in d.reasons[0]
        with pytest.raises(ConfigError):
            k.report_usage("s", cost=-1)


def test_loop_breaker_on_repeats_and_failures() -> None:
    with Kernel.from_text(BUDGETS, audit=False) as k:
        same = Action(tool="search", args={"q": "cats"}, session={"id": "s"})
        assert [k.evaluate(same).allowed for _ in range(4)] == [True, True, True, False]
        assert k.evaluate(same).code == "loop"
        # the breaker has tripped for the session: every further call is denied ...
        assert k.evaluate(same._replace(args={"q": "birds"})).code == "loop"
        # ... until someone resets it (audited when there is an audit log)
        with pytest.raises(ConfigError):
            k.reset_breaker("s", by="")
        k.reset_breaker("s", by="oncall", reason="looked at it")
        assert k.evaluate(same._replace(args={"q": "birds"})).allowed
        assert k.evaluate(same).allowed  # the repeat count was cleared too
        flaky = Action(tool="fetch", args={"url": "u"}, session={"id": "s2"})
        for _ in range(2):
            d = k.evaluate(flaky)
            assert d.allowed
            k.record_outcome(d, "exception", error="timeout")
        d = k.evaluate(flaky)
        assert d.code == "loop" and "retry budget 2" in d.reasons[0]
        other_session = Action(tool="fetch", args={"url": "u"}, session={"id": "S2"})
        assert k.evaluate(other_session).allowed  # sessions are separate, case included


def test_budget_keys_are_validated() -> None:
    from bastion import PolicyError

    for bad in ("{session_cost: -1}", "{max_repeats: 0}", "{max_repeats: 1.5}", "{loops: 3}"):
        with pytest.raises(PolicyError):
            Kernel.from_text(f"version: 1\nbudgets: {bad}\n")


def test_a_truncated_generation_file_fails_safe_not_fatal(tmp_path: Path) -> None:
    """Review finding: with a memory-mapped counter, truncating the file killed every process
    sharing the store (SIGBUS). Now the flags are simply re-read from the database."""
    state = tmp_path / "state.db"
    with Kernel.from_text(POLICY, audit=False, state=state) as k:
        call = Action(tool="transfer", args={"amount": 1})
        assert k.evaluate(call).allowed
        (tmp_path / "state.db.gen").write_bytes(b"")
        other = open_store(state)
        other.set_flag("kill:all", "x")
        assert k.evaluate(call).code == "kill_switch"
        other.clear_flag("kill:all")
        assert k.evaluate(call).allowed
        other.close()


def test_tiny_costs_add_up_and_bad_usage_is_refused() -> None:
    text = "version: 1\nbudgets: {session_cost: 0.001}\nrules:\n  - {id: all, effect: allow}\n"
    with Kernel.from_text(text, audit=False) as k:
        for _ in range(2000):
            k.report_usage("s", cost=4e-7)
        assert k.evaluate(Action(tool="t", session={"id": "s"})).code == "budget"
        for bad in ({"cost": float("inf")}, {"cost": float("nan")}, {"cost": 1e308},
                    {"tokens": 0.9}, {"tokens": -1}, {"tokens": True}):
            with pytest.raises(ConfigError):
                k.report_usage("s", **bad)  # type: ignore[arg-type]


def test_loop_breaker_counts_spelling_variants_as_the_same_call() -> None:
    with Kernel.from_text(BUDGETS, audit=False) as k:
        variants = [{"q": "cats", "n": 1}, {"q": "CATS", "n": 1.0}, {"q": "ca\u200bts ", "n": 1}]
        allowed = [k.evaluate(Action(tool="search", args=a, session={"id": "s"})).allowed
                   for a in variants + variants]
        assert allowed == [True, True, True, False, False, False]


def test_file_sources_fail_precisely(tmp_path: Path) -> None:
    """Policies, Cedar policies, catalogs and test files share one reader: a catalog file named
    version.yaml is still a file, and a directory or bad bytes are PolicyErrors, not tracebacks."""
    from bastion import PolicyError
    from bastion._policytest import run_file
    from bastion.flow import load_catalog

    named = tmp_path / "version.yaml"
    named.write_text("version: 1\ntools:\n  t: {class: read}\n")
    assert load_catalog(str(named)).get("t").tool_class == "read"
    bad = tmp_path / "bad.cedar"
    bad.write_bytes(b"permit(principal, action, resource);\n\xff\n")
    with pytest.raises(PolicyError) as info:
        Kernel.from_policy(bad)
    assert (info.value.line, info.value.column) == (2, 1)
    with pytest.raises(PolicyError, match="cannot read"):
        run_file(tmp_path)
