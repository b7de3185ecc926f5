#!/usr/bin/env python3
"""State store benchmark: what each backend costs a decision.

    .venv/bin/python benchmarks/bench_state.py [--iterations 5000] [--redis URL]

For each backend (in-process, a SQLite file, Redis at ``--redis``, default
``$BASTION_BENCH_REDIS`` or ``redis://127.0.0.1:6379/0``; skipped, saying so, when it does not
answer): the store's own ``take`` and ``flags()`` (read on every decision), and one
``Kernel.evaluate`` (audit off) of a policy without stateful rules and of one whose matching rule
has a rate limit (one ``take`` per decision). Results go to stdout and
``benchmarks/results/state.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from bench_kernel import measure  # noqa: E402

from bastion import Action, Kernel  # noqa: E402
from bastion.state import open_store  # noqa: E402

PLAIN = "version: 1\nrules:\n  - {id: mail, tools: [send_email], effect: allow}\n"
LIMITED = ("version: 1\nrules:\n  - {id: mail, tools: [send_email], effect: allow, "
           "limit: 999999999/hour}\n")
CALL = Action(tool="send_email", args={"to": "a@example.com"}, agent={"id": "a1"})


def backends(redis_url: str, scratch: Path) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = [("memory", None),
                                           ("sqlite file", str(scratch / "state.db"))]
    try:
        store = open_store(redis_url)
        store.count("probe", 60, time.time())
        store.close()
    except Exception as exc:  # any failure means: not measured, say why
        print(f"redis: not measured ({exc})")
        return found
    sep = "&" if "?" in redis_url else "?"
    found.append(("redis", f"{redis_url}{sep}prefix=bench{uuid.uuid4().hex[:8]}"))
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=5000)
    ap.add_argument("--redis", default=os.environ.get("BASTION_BENCH_REDIS",
                                                      "redis://127.0.0.1:6379/0"))
    opts = ap.parse_args()
    n = opts.iterations
    rows: list[dict[str, object]] = []
    header = f"{'backend':12} {'operation':34} {'p50 µs':>8} {'p99 µs':>8}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for name, url in backends(opts.redis, Path(tmp)):
            store = open_store(url)
            time.sleep(0.3)  # Redis: let the flag subscription come up
            ops: list[tuple[str, Callable[[], object]]] = [
                ("store.take", lambda s=store: s.take("bench", 1 << 60, 3600, time.time())),
                ("store.flags (cached)", store.flags),
            ]
            with Kernel.from_text(PLAIN, audit=False, state=store) as plain, \
                    Kernel.from_text(LIMITED, audit=False, state=store) as limited:
                ops += [("evaluate, no stateful rule", lambda k=plain: k.evaluate(CALL)),
                        ("evaluate, rate-limited rule", lambda k=limited: k.evaluate(CALL))]
                for op, fn in ops:
                    r = measure(fn, n, n // 10, 5)
                    rows.append({"backend": name, "operation": op, **r})
                    print(f"{name:12} {op:34} {r['p50_us']:8.1f} {r['p99_us']:8.1f}")
                store.clear_prefix("")  # the kernels close the store as they leave
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "state.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
