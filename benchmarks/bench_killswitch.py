#!/usr/bin/env python3
"""Kill-switch costs: the check on every decision, and the time from `kill` in one process to
the next denied decision in another process sharing the SQLite state store.

    .venv/bin/python benchmarks/bench_killswitch.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from bastion import Action, Kernel  # noqa: E402
from bastion.runtime._kill import KillSwitch  # noqa: E402

POLICY = "version: 1\nrules:\n  - {id: all, tools: [send_email], effect: allow}\n"

FOLLOWER = """
import sys, time
from bastion import Action, Kernel
with Kernel.from_text(sys.argv[2], audit=False, state=sys.argv[1]) as k:
    a = Action(tool="send_email", agent={"id": "agent-1"})
    print("ready", flush=True)
    while k.evaluate(a).allowed:
        pass
    print(time.time_ns(), flush=True)
"""


def check_cost() -> None:
    with tempfile.TemporaryDirectory() as tmp, \
            Kernel.from_text(POLICY, audit=False, state=str(Path(tmp) / "s.db")) as k:
        a = Action(tool="send_email", agent={"id": "agent-1"})
        n = 50_000
        base = min(timeit.repeat(lambda: k.evaluate(a), number=n, repeat=5)) / n * 1e6
        KillSwitch.for_kernel(k).engage(by="bench", agent="someone-else")
        flagged = min(timeit.repeat(lambda: k.evaluate(a), number=n, repeat=5)) / n * 1e6
    print(f"decision, no flags engaged:               {base:6.2f} µs")
    print(f"decision, an unrelated flag engaged:      {flagged:6.2f} µs "
          f"(check cost {flagged - base:+.2f} µs)")


def propagation(rounds: int = 7) -> None:
    delays = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            state = str(Path(tmp) / "s.db")
            Kernel.from_text(POLICY, audit=False, state=state).close()
            follower = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(FOLLOWER), state, POLICY],
                stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT / "src")})
            assert follower.stdout is not None
            assert follower.stdout.readline().strip() == "ready"
            time.sleep(0.1)
            with Kernel.from_text(POLICY, audit=False, state=state) as k:
                t0 = time.time_ns()
                KillSwitch.for_kernel(k).engage(by="bench", everything=True)
            denied_at = int(follower.communicate(timeout=30)[0].strip())
            delays.append((denied_at - t0) / 1e6)
    print(f"kill -> next denied call in another process: median {statistics.median(delays):.2f}"
          f" ms (min {min(delays):.2f}, max {max(delays):.2f}, {rounds} rounds)")


if __name__ == "__main__":
    check_cost()
    propagation()
