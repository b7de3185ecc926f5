"""Runtime benchmarks: sandbox start-up latency per isolation level, saga step overhead.

    .venv/bin/python benchmarks/bench_runtime.py [--runs N]

Levels this machine lacks are reported as unavailable (with the detector's reason), not run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bastion.runtime import (
    IsolationLevel,
    SagaLog,
    SagaRegistry,
    SagaRunner,
    Sandbox,
    SandboxPolicy,
    Step,
    StepContext,
    detect_isolation,
)


def bench_sandbox(runs: int) -> None:
    t = time.perf_counter()
    caps = detect_isolation()
    print(f"detect_isolation: {(time.perf_counter() - t) * 1e3:.1f} ms; "
          f"pids limit via {caps.pids}; notes: {list(caps.notes)}")
    for level in IsolationLevel:
        if level not in caps.levels:
            print(f"  {level.name:<10} unavailable")
            continue
        sb = Sandbox(SandboxPolicy(required_level=level, timeout_s=10))
        for argv_name, argv in (("/bin/true", ["/bin/true"]),
                                ("python -c pass", [sb.python, "-I", "-c", "pass"])):
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                r = sb.run(argv)
                times.append((time.perf_counter() - t) * 1e3)
                assert r.ok, r
            print(f"  {level.name:<10} {argv_name:<15} median {statistics.median(times):6.1f} ms"
                  f"  p90 {sorted(times)[int(len(times) * 0.9) - 1]:6.1f} ms")


def bench_saga(steps: int, sagas: int) -> None:
    reg = SagaRegistry()
    def act(ctx: StepContext) -> str:
        return ctx.step

    def undo(ctx: StepContext, result: object) -> None:
        return None

    reg.register("bench", [Step(f"s{i}", act, undo) for i in range(steps)])
    with tempfile.TemporaryDirectory() as tmp:
        for target in (":memory:", str(Path(tmp, "saga.db"))):
            runner = SagaRunner(reg, SagaLog(target))
            t = time.perf_counter()
            for _ in range(sagas):
                assert runner.run("bench").status == "completed"
            per_step = (time.perf_counter() - t) / (sagas * steps) * 1e6
            print(f"  saga step overhead ({target if target == ':memory:' else 'file'}): "
                  f"{per_step:.0f} µs/step")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    print("sandbox start-up latency (spawn → reaped, work dir and cgroup included)")
    bench_sandbox(args.runs)
    print("sagas (write-ahead + result per step, no-op actions)")
    bench_saga(steps=10, sagas=50)


if __name__ == "__main__":
    main()
