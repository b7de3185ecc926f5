"""Second review of execution control (``bastion.runtime``, budgets, the kill switch over the
state stores). Each test asserts the behaviour the code should have: eight of the nine findings
are fixed; the last (root code at RLIMITS leaving its pids cgroup) is a documented limit of that
level (docs/runtime.md) and stays a strict xfail."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from bastion import Action, GovernanceDenied, Kernel, StateError, govern
from bastion.audit import AuditLog
from bastion.flow import parse_catalog
from bastion.runtime import (
    IsolationLevel,
    KillSwitch,
    RetryPolicy,
    RingGuard,
    SagaAlert,
    SagaLog,
    SagaRegistry,
    SagaRunner,
    Sandbox,
    SandboxPolicy,
    Step,
    StepContext,
    detect_isolation,
)
from bastion.state import StateStore, open_store

POLICY = "version: 1\nrules:\n  - {id: all, effect: allow}\n"


# -- the kill switch ---------------------------------------------------------------------------

def test_the_kill_switch_stops_a_governed_async_generator() -> None:
    with Kernel.from_text(POLICY, audit=False) as kernel:
        switch = KillSwitch.for_kernel(kernel)

        @govern(kernel, agent={"id": "crawler"})
        async def stream_pages() -> Any:
            for page in range(6):
                await asyncio.sleep(0.01)
                yield page

        async def main() -> list[object]:
            got: list[object] = []
            try:
                async for page in stream_pages():
                    got.append(page)
                    if page == 1:
                        switch.engage(by="oncall", reason="runaway", agent="crawler")
            except GovernanceDenied as denied:
                got.append(denied.decision.code)
            return got

        got = asyncio.run(main())
        # at most the item already in flight may arrive after the kill, then the call ends
        assert got[-1] == "kill_switch" and len(got) <= 4, got


class _WritesFail:
    """A state store that reads but cannot write (Redis paused for writes, a locked or full
    SQLite file): the moment an operator most needs the local effect of the switch."""

    def __init__(self, inner: StateStore):
        self.inner = inner

    def set_flag(self, key: str, value: str) -> None:
        raise StateError("state store 'redis://…': changing a flag failed: Timeout")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_engaging_during_a_store_outage_still_stops_local_calls() -> None:
    with Kernel.from_text(POLICY, audit=False) as kernel:
        switch = KillSwitch(_WritesFail(kernel.state))

        @govern(kernel, agent={"id": "crawler"})
        async def crawl() -> str:
            await asyncio.sleep(30)
            return "done"

        async def main() -> bool:
            task = asyncio.create_task(crawl())
            await asyncio.sleep(0.05)
            try:
                with pytest.raises(StateError):  # the durable flag could not be written ...
                    switch.engage(by="oncall", reason="runaway", agent="crawler")
                done, _ = await asyncio.wait({task}, timeout=1.0)
                # ... but what runs here must still be stopped
                return task in done and isinstance(task.exception(), GovernanceDenied)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        assert asyncio.run(main())


def test_a_store_opened_through_a_symlink_sees_the_kill_switch(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "app").mkdir()
    real = tmp_path / "data" / "state.db"
    open_store(str(real)).close()
    os.symlink(real, tmp_path / "app" / "state.db")  # e.g. a deploy's "current" link
    bot = Action(tool="wire_money", agent={"id": "bot"})
    with Kernel.from_text(POLICY, audit=False, state=tmp_path / "app" / "state.db") as kernel:
        assert kernel.evaluate(bot).allowed  # flags read (and cached)
        ops = open_store(str(real))  # the operator's process names the real file
        try:
            KillSwitch(ops).engage(by="oncall", reason="fraud", agent="bot")
            assert "kill:agent:bot" in ops.flags()
        finally:
            ops.close()
        assert kernel.evaluate(bot).code == "kill_switch"


def test_a_release_that_cannot_be_audited_leaves_the_switch_engaged() -> None:
    log = AuditLog.open(None)
    switch = KillSwitch(open_store(None), audit=log)
    switch.engage(by="oncall", reason="runaway", agent="bot")
    log.close()  # the log now refuses every write (closed, failed disk, another writer)
    with pytest.raises(Exception):  # noqa: B017 - AuditError today; any refusal will do
        switch.release(by="alice", reason="fixed", agent="bot")
    assert "kill:agent:bot" in switch.engaged()


# -- rings -------------------------------------------------------------------------------------

def test_an_elevation_that_cannot_be_audited_grants_nothing() -> None:
    catalog = parse_catalog("version: 1\ntools:\n  send_email: {class: egress}\n")
    log = AuditLog.open(None)
    guard = RingGuard(catalog, ring_of=lambda agent: 3, state=open_store(None), audit=log)
    log.close()
    with pytest.raises(Exception):  # noqa: B017 - AuditError today; any refusal will do
        guard.elevate("bot", 1, seconds=600, approved_by="lead", reason="incident")
    assert guard.ring("bot") == 3


# -- budgets and the loop breaker -------------------------------------------------------------

def test_the_retry_budget_holds_for_calls_with_redacted_arguments() -> None:
    policy = ("version: 1\nbudgets: {max_failures: 2}\nrules:\n  - {id: all, effect: allow}\n"
              "  - {id: hide-token, effect: redact, redact: [args.token]}\n")
    with Kernel.from_text(policy, audit=False) as kernel:
        calls: list[str] = []

        @govern(kernel, session={"id": "s1"})
        def fetch(url: str, token: str) -> str:
            calls.append(url)
            raise ConnectionError("upstream down")

        codes = []
        for _ in range(5):
            try:
                fetch("https://api.example/pay", token="sk-live-1")
            except ConnectionError:
                codes.append("failed")
            except GovernanceDenied as denied:
                codes.append(denied.decision.code)
        assert codes == ["failed", "failed", "loop", "loop", "loop"], codes
        assert len(calls) == 2


def test_resetting_one_sessions_breaker_leaves_other_sessions_counts() -> None:
    policy = "version: 1\nbudgets: {max_repeats: 3}\nrules:\n  - {id: all, effect: allow}\n"
    with Kernel.from_text(policy, audit=False) as kernel:
        loop = Action(tool="search", args={"q": "cats"}, session={"id": "tenant:42"})
        assert [kernel.evaluate(loop).allowed for _ in range(3)] == [True] * 3
        kernel.evaluate(Action(tool="search", args={"q": "x"}, session={"id": "tenant"}))
        kernel.reset_breaker("tenant", by="ops", reason="reset of session 'tenant' only")
        assert kernel.evaluate(loop).code == "loop"  # the 4th repeat in session 'tenant:42'


# -- sagas -------------------------------------------------------------------------------------

def test_a_long_retry_policy_escalates_instead_of_crashing() -> None:
    alerts: list[SagaAlert] = []

    def refund(ctx: StepContext, result: Any) -> None:
        raise ConnectionError("refund service down")

    registry = SagaRegistry()
    registry.register("order", [
        Step("charge", lambda ctx: "charged", refund),
        Step("ship", lambda ctx: (_ for _ in ()).throw(OSError("no courier")))])
    # retry a compensation for a day or so: capped at 60 s, 1,500 attempts
    retry = RetryPolicy(max_attempts=1500, base_delay_s=0.5, multiplier=2.0, max_delay_s=60.0)
    runner = SagaRunner(registry, SagaLog(":memory:"), alert=alerts.append, retry=retry,
                        sleep=lambda s: None)
    outcome = runner.run("order", {}, saga_id="o1")
    assert outcome.status == "stuck" and [a.step for a in alerts] == ["charge"]


# -- the sandbox -------------------------------------------------------------------------------

CAPS = detect_isolation()


@pytest.mark.skipif(os.geteuid() != 0 or not (CAPS.pids or "").startswith("cgroup")
                    or IsolationLevel.RLIMITS not in CAPS.levels,
                    reason="needs root and a pids cgroup (RLIMITS backed by a cgroup)")
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "review-runtime2: at RLIMITS as root the code can move itself out of its pids cgroup "
    "(cgroup.procs is writable), so a setsid child outlives the run and every kill"))
def test_root_code_at_rlimits_cannot_outlive_the_run(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    assert CAPS.cgroup_root is not None
    code = textwrap.dedent(f"""\
        import os, time
        with open({os.path.join(CAPS.cgroup_root, 'cgroup.procs')!r}, 'w') as f:
            f.write(str(os.getpid()))  # leave the sandbox's pids cgroup
        if os.fork() == 0:
            os.setsid()  # and its process group
            for fd in (0, 1, 2):
                os.close(fd)
            time.sleep(1.5)
            open({str(marker)!r}, 'w').write('still running after the run ended')
            os._exit(0)
        print('parent exits')
        """)
    sandbox = Sandbox(SandboxPolicy(required_level=IsolationLevel.RLIMITS, timeout_s=10.0))
    result = sandbox.run_python(code)
    assert result.level == IsolationLevel.RLIMITS and result.stdout == "parent exits\n", result
    time.sleep(2.5)
    assert not marker.exists(), "a process of the run outlived it"
