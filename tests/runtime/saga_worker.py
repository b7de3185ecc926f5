"""A separate process that runs or resumes the ``trip`` saga; used by the crash-and-resume test.

usage: saga_worker.py LOG EFFECTS run|resume [--hang WHERE] [--fail STEP]

Every action and compensation records its effect in the EFFECTS database *idempotently by its
idempotency key* (the contract a real step must honour) and counts every raw call. ``--hang
KIND:STEP:before|after`` touches ``EFFECTS.hung`` and sleeps forever at that point, so the parent
can SIGKILL the process there; ``--fail STEP`` makes that step's action fail.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from pathlib import Path
from typing import Any

from bastion.runtime import SagaLog, SagaRegistry, SagaRunner, Step, StepContext

STEPS = ("reserve", "pay", "ship")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("effects")
    ap.add_argument("mode", choices=["run", "resume"])
    ap.add_argument("--hang", default="")
    ap.add_argument("--fail", default="")
    args = ap.parse_args()
    fx = sqlite3.connect(args.effects, isolation_level=None, timeout=30)
    fx.execute("create table if not exists effects (key text, step text, kind text)")
    fx.execute("create table if not exists calls (step text, kind text)")

    def point(kind: str, step: str, when: str) -> None:
        if args.hang == f"{kind}:{step}:{when}":
            Path(args.effects + ".hung").touch()
            time.sleep(3600)

    def effect(kind: str, step: str, key: str) -> None:
        fx.execute("insert into calls values (?, ?)", (step, kind))
        point(kind, step, "before")
        fx.execute("begin immediate")
        if fx.execute("select 1 from effects where key=?", (key,)).fetchone() is None:
            fx.execute("insert into effects values (?, ?, ?)", (key, step, kind))
        fx.execute("commit")
        point(kind, step, "after")

    def make(step: str) -> Step:
        def action(ctx: StepContext) -> Any:
            if step == args.fail:
                raise RuntimeError(f"{step} failed")
            effect("action", step, ctx.idempotency_key)
            return {"step": step}

        def compensate(ctx: StepContext, result: Any) -> None:
            effect("compensate", step, ctx.idempotency_key)

        return Step(step, action, compensate)

    registry = SagaRegistry()
    registry.register("trip", [make(s) for s in STEPS])
    runner = SagaRunner(registry, SagaLog(args.log), lease_s=0.5, sleep=lambda s: None)
    if args.mode == "run":
        print(runner.run("trip", {"who": "ada"}, saga_id="saga-1").status)
    else:
        print(",".join(o.status for o in runner.resume_all()))


if __name__ == "__main__":
    main()
