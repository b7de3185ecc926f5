"""Mesh throughput: envelope seal+open, and token chain verification at depth 1, 3 and 5.

Run: ``.venv/bin/python benchmarks/bench_mesh.py [--seconds 1.0]``. Prints one JSON object.
Envelope opening includes the SQLite nonce claim (in memory), as a receiver would do it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from bastion.mesh import (
    Identity,
    delegate_token,
    issue_token,
    open_envelope,
    open_mesh_store,
    seal,
    verify_token,
)


def _rate(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn()
        n += 50
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0)
    seconds = parser.parse_args().seconds
    now = time.time()
    ids = [Identity.generate() for _ in range(6)]
    store = open_mesh_store(None)
    body = b'{"task": "summarise", "doc": "' + b"x" * 512 + b'"}'

    def envelope() -> None:
        wire = seal(ids[0], ids[1].did, body, now=time.time())
        open_envelope(wire, recipient=ids[1].did, nonces=store, now=time.time())

    results: dict[str, float] = {"envelope_seal_open_per_s": _rate(envelope, seconds)}
    token = issue_token(ids[0], audience=ids[1].did, scopes=["tool:read_*", "tool:pay"],
                        constraints={"tool:pay": {"amount": {"max": 100}}}, now=now)
    chains = {1: token}
    for depth in range(2, 6):
        token = delegate_token(token, ids[depth - 1], audience=ids[depth].did, now=now)
        chains[depth] = token
    roots = {ids[0].did}
    for depth in (1, 3, 5):
        text = chains[depth].encode()
        results[f"token_verify_depth{depth}_per_s"] = _rate(
            lambda text=text: verify_token(text, roots=roots, now=now, revocations=store),
            seconds)
    print(json.dumps({k: round(v) for k, v in results.items()}, indent=2))
    store.close()


if __name__ == "__main__":
    main()
