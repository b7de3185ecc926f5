"""Information-flow costs: what provenance adds to a decision.

Rows (default pack ``policies/flow-default.yaml``, a catalog, audit off):

* ``pre_tool`` decision of a side-effecting call with two sink arguments after N results of about
  1 KB each were recorded in the session (N = 0, 10, 50, 200), the same call repeated (what
  provenance remembers between two decisions with nothing new recorded is reused);
* the same decision, each one right after a new result was recorded (200 to 400 results in the
  session): what an agent that reads and acts in turn meets;
* ``post_tool`` decision that records one such result (``pass``), marks it (``mark``) or
  quarantines it (``quarantine``);
* with a shared SQLite state file: the ``pre_tool`` decision, the same with provenance shared
  (``share_flow=True``), and a worker switch (worker A records a 1 KB result, worker B, which
  replays it, decides);
* for comparison, the same ``pre_tool`` call under a policy without flow (no catalog).

Each row is the median of 5 rounds; the script prints the range so a noisy machine shows.
Run: ``.venv/bin/python benchmarks/bench_flow.py`` (writes ``results/flow.json``).
"""

from __future__ import annotations

import json
import random
import statistics
import string
import tempfile
import time
from pathlib import Path
from typing import Any

import bastion

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "policies" / "flow-default.yaml"
CATALOG = """\
version: 1
tools:
  read_inbox: {class: read, side_effects: false}
  read_marked: {class: read, side_effects: false, result: {handling: mark}}
  read_quarantined: {class: read, side_effects: false, result: {handling: quarantine}}
  send_money: {class: write, sinks: [recipient, amount]}
"""
PLAIN = """\
version: 1
rules:
  - {id: big, tools: [send_money], when: "args.amount > 10000", effect: deny}
  - {id: ok, effect: allow}
"""
ROUNDS = 5


def email(rnd: random.Random, i: int) -> dict[str, Any]:
    words = " ".join("".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(3, 9)))
                     for _ in range(120))
    return {"from": f"user{i}@corp{i % 7}.example", "subject": f"Invoice {i}",
            "body": f"{words} pay {rnd.randint(10, 9999)} EUR to "
                    f"DE{rnd.randint(10, 99)}370400440532{rnd.randint(100000, 999999)} "
                    f"see https://x{i}.example/p?q={i}"}


def per_call_us(fn: Any, n: int) -> tuple[float, float, float]:
    rounds = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(rounds), min(rounds), max(rounds)


def after_new_result(k: bastion.Kernel, rnd: random.Random, pay: bastion.Action
                     ) -> tuple[float, float, float]:
    """The decision an agent meets in practice: the first one after a new result was recorded
    (what provenance caches from the last decision no longer holds). Only the decision is
    timed; the session starts with 200 results and gains one before each decision."""
    session = {"id": "fresh"}
    k.evaluate(bastion.Action(stage="input", session=session, args={
        "text": "pay the rent of 1200 EUR to DE89 3704 0044 0532 0130 00"}))
    for i in range(200):
        k.evaluate(bastion.Action(tool="read_inbox", stage="post_tool", session=session,
                                  result=[email(rnd, 5000 + i)]))
    call = pay._replace(session=session)
    rounds, i = [], 200
    for _ in range(ROUNDS):
        spent = 0.0
        for _ in range(40):
            i += 1
            k.evaluate(bastion.Action(tool="read_inbox", stage="post_tool", session=session,
                                      result=[email(rnd, 5000 + i)]))
            t = time.perf_counter()
            k.evaluate(call)
            spent += time.perf_counter() - t
        rounds.append(spent / 40 * 1e6)
    return statistics.median(rounds), min(rounds), max(rounds)


def main() -> None:
    rnd = random.Random(7)
    rows: dict[str, tuple[float, float, float]] = {}
    pay = bastion.Action(tool="send_money", stage="pre_tool", session={"id": "s"},
                         args={"recipient": "DE89370400440532013000", "amount": 1200})
    with bastion.Kernel.from_policy(PACK, catalog=CATALOG, audit=False) as k:
        k.evaluate(bastion.Action(stage="input", session={"id": "s"}, args={
            "text": "pay the rent of 1200 EUR to DE89 3704 0044 0532 0130 00"}))
        done = 0
        for n in (0, 10, 50, 200):
            for i in range(done, n):
                k.evaluate(bastion.Action(tool="read_inbox", stage="post_tool",
                                          session={"id": "s"}, result=[email(rnd, i)]))
            done = n
            assert k.evaluate(pay).allowed
            rows[f"pre_tool after {n} results"] = per_call_us(lambda: k.evaluate(pay), 300)
        rows["pre_tool after 200 results, each after a new one"] = after_new_result(k, rnd, pay)
        for tool in ("read_inbox", "read_marked", "read_quarantined"):
            results = [email(rnd, 1000 + i) for i in range(50)]
            it = iter(range(1 << 30))

            def record(tool: str = tool, results: list[Any] = results, it: Any = it) -> None:
                i = next(it)
                k.evaluate(bastion.Action(tool=tool, stage="post_tool",
                                          session={"id": f"r{i % 50}"}, result=[results[i % 50]]))

            rows[f"post_tool record ({tool})"] = per_call_us(record, 100)
    with tempfile.TemporaryDirectory() as tmp, bastion.Kernel.from_policy(
            PACK, catalog=CATALOG, audit=False, state=f"{tmp}/state.db") as k:
        # a store other workers share: every flow fact (an allowed call too) is counted in it
        k.evaluate(bastion.Action(stage="input", session={"id": "s"}, args={
            "text": "pay the rent of 1200 EUR to DE89 3704 0044 0532 0130 00"}))
        rows["pre_tool, shared SQLite state store"] = per_call_us(lambda: k.evaluate(pay), 300)
    with tempfile.TemporaryDirectory() as tmp, bastion.Kernel.from_policy(
            PACK, catalog=CATALOG, audit=False, state=f"{tmp}/state.db",
            share_flow=True) as a, bastion.Kernel.from_policy(
            PACK, catalog=CATALOG, audit=False, state=f"{tmp}/state.db", share_flow=True) as b:
        # provenance shared by two workers: every fact's body is kept too, and a worker replays
        # what the other recorded before it decides
        a.evaluate(bastion.Action(stage="input", session={"id": "s"}, args={
            "text": "pay the rent of 1200 EUR to DE89 3704 0044 0532 0130 00"}))
        rows["pre_tool, shared SQLite, share_flow"] = per_call_us(lambda: a.evaluate(pay), 300)
        seq = iter(range(1 << 30))

        def switch() -> None:
            a.evaluate(bastion.Action(tool="read_inbox", stage="post_tool", session={"id": "s"},
                                      result=[email(rnd, 5000 + next(seq))]))
            b.evaluate(pay)

        rows["1 KB result on A, then pre_tool on B"] = per_call_us(switch, 100)
    with bastion.Kernel.from_text(PLAIN, audit=False) as k:
        rows["pre_tool, policy without flow"] = per_call_us(lambda: k.evaluate(pay), 3000)
    print(f"{'row':40} {'p50 µs':>9} {'min':>9} {'max':>9}")
    for name, (med, lo, hi) in rows.items():
        print(f"{name:40} {med:9.1f} {lo:9.1f} {hi:9.1f}")
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    (out / "flow.json").write_text(json.dumps(
        {k: {"p50_us": v[0], "min_us": v[1], "max_us": v[2]} for k, v in rows.items()},
        indent=2))


if __name__ == "__main__":
    main()
