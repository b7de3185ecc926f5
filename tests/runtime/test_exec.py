"""Code runs only at the isolation the agent's ring requires; otherwise the kernel denies."""

from __future__ import annotations

import pytest

from bastion import GovernanceDenied, Kernel
from bastion.flow import parse_catalog
from bastion.runtime import Capabilities, IsolationLevel, RingGuard, detect_isolation
from bastion.runtime._exec import IsolationGuard, code_tool

CATALOG = parse_catalog("version: 1\ntools:\n  run_python: {class: code}\n")
POLICY = "version: 1\nrules:\n  - {id: all, effect: allow}\n"


def _kernel(caps: Capabilities | None, ring: int) -> tuple[Kernel, IsolationGuard]:
    kernel = Kernel.from_text(POLICY, audit=False, catalog=CATALOG)
    rings = RingGuard(CATALOG, ring_of=lambda agent: ring, state=kernel.state)
    isolation = IsolationGuard(CATALOG, rings, capabilities=caps)
    kernel.add_guard(rings)
    kernel.add_guard(isolation)
    return kernel, isolation


def test_missing_isolation_is_a_deny_and_nothing_runs() -> None:
    weak = Capabilities(levels=frozenset({IsolationLevel.NONE}), pids=None,
                        notes=("no pids cgroup",))
    kernel, isolation = _kernel(weak, ring=1)
    with kernel:
        run = code_tool(kernel, isolation, agent_id="agent-1")
        with pytest.raises(GovernanceDenied) as info:
            run("open('/tmp/pwned', 'w')")
        d = info.value.decision
        assert d.code == "guard" and "requires bwrap isolation" in d.reasons[0]


def test_ring_3_cannot_run_code_at_all() -> None:
    kernel, isolation = _kernel(detect_isolation(), ring=3)
    with kernel:
        with pytest.raises(GovernanceDenied) as info:
            code_tool(kernel, isolation, agent_id="agent-1")("print(1)")
        assert "class 'code'" in info.value.decision.reasons[0]


def test_code_runs_at_the_required_level_when_available() -> None:
    caps = detect_isolation()
    if IsolationLevel.BWRAP not in caps.levels:
        pytest.skip(f"bwrap isolation unavailable here: {caps.notes}")
    kernel, isolation = _kernel(caps, ring=1)
    with kernel:
        result = code_tool(kernel, isolation, agent_id="agent-1")("print(6 * 7)")
        assert result.exit_code == 0 and result.stdout == "42\n"
        assert result.level >= IsolationLevel.BWRAP
