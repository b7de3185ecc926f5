#!/usr/bin/env python3
"""Audit log throughput: batched and durable events/s, caller-side append cost, worker cost.

Run: .venv/bin/python benchmarks/bench_audit.py [--events N]
Writes to a temporary directory (file-backed SQLite, WAL) and removes it afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.audit import AuditLog, verify
from bastion.audit._chain import Chain
from bastion.audit._merkle import CompactTree
from bastion.audit._store import Resumed


def event(i: int) -> dict[str, Any]:
    return {
        "kind": "decision",
        "id": f"01J{i:023d}",
        "ts": 1_700_000_000_000_000_000 + i,
        "tool": "send_email",
        "effect": "allow",
        "reasons": ["rule 'allow-mail' matched"],
        "principal": "agent-7",
        "digest": "sha256:" + "ab" * 32,
    }


def bench_batched(directory: Path, n: int) -> tuple[float, float]:
    bodies = [event(i) for i in range(n)]
    with AuditLog.open(directory / "batched.db") as log:
        start = time.perf_counter()
        for body in bodies:
            log.append(body)
        log.flush()
        elapsed = time.perf_counter() - start
    report = verify(directory / "batched.db")
    assert report.ok and report.entries == n, report
    return n / elapsed, elapsed / n * 1e9


def bench_append_cost(directory: Path, n: int) -> float:
    """Median caller-side cost of append (queue not full), timed in blocks of 100 calls."""
    bodies = [event(i) for i in range(n)]
    samples: list[float] = []
    with AuditLog.open(directory / "append.db", queue_max=n + 1) as log:
        for block in range(0, n, 100):
            chunk = bodies[block : block + 100]
            start = time.perf_counter_ns()
            for body in chunk:
                log.append(body)
            samples.append((time.perf_counter_ns() - start) / len(chunk))
    return statistics.median(samples)


def bench_seal(n: int) -> float:
    """Worker CPU per event without SQLite: encode, MAC, leaf hash, tree append."""
    chain = Chain(b"k" * 32, Ed25519PrivateKey.generate(),
                  Resumed(0, "0" * 64, CompactTree(), 0, 0),
                  checkpoint_every=10**9, clock=time.time_ns)
    bodies = [event(i) for i in range(n)]
    start = time.perf_counter()
    for block in range(0, n, 512):
        chain.advance(chain.seal(bodies[block : block + 512]))
    return (time.perf_counter() - start) / n * 1e9


def bench_durable(directory: Path, n: int) -> float:
    with AuditLog.open(directory / "durable.db", durable=True) as log:
        start = time.perf_counter()
        for i in range(n):
            log.append(event(i))
        elapsed = time.perf_counter() - start
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--durable-events", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        seal_ns = bench_seal(args.events)
        rate, per_event = bench_batched(directory, args.events)
        append_ns = bench_append_cost(directory, min(args.events, 100_000))
        durable = bench_durable(directory, args.durable_events)
    print(f"worker seal (encode+mac+leaf+tree), per event: {seal_ns:8.0f} ns")
    print(f"batched end-to-end (append..flush), per event: {per_event:8.0f} ns")
    print(f"batched throughput:                            {rate:8.0f} events/s")
    print(f"append caller cost, p50 (blocks of 100):       {append_ns:8.0f} ns")
    print(f"durable throughput (commit per append, FULL):  {durable:8.0f} events/s")


if __name__ == "__main__":
    main()
