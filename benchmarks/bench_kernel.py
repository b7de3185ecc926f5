#!/usr/bin/env python3
"""Kernel benchmark: one decision, through ``Kernel.evaluate`` and a ``govern()``-wrapped function,
for 1 and 50 rules with the matching rule last, audit on (batched SQLite file) and off; side by
side with the reference implementation (agent-governance-toolkit-core 5.0.0) run from ``.venv-ref``.

    .venv/bin/python benchmarks/bench_kernel.py [--iterations 20000] [--no-reference]

The bastion policy has the same shape as the reference's (see ``_ref_agt.py``): rules 1..N-1 are
deny rules that do not match — odd ones name another tool, even ones are CEL conditions on the
arguments that apply to every tool and so are evaluated on every call — and rule N allows
``send_email`` when ``args.to == 'a@example.com'``. Results go to stdout and
``benchmarks/results/kernel.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

import bastion  # noqa: E402
from bastion import Action, Kernel, govern  # noqa: E402

CALL = {"to": "a@example.com", "body": "hi"}


def policy(n_rules: int, *, conditional_match: bool = True) -> str:
    lines = ["version: 1", f"name: bench-{n_rules}", "default: deny", "rules:"]
    for i in range(1, n_rules):
        if i % 2:
            lines += [f"  - id: deny_{i}", f"    tools: [blocked_tool_{i}]", "    effect: deny"]
        else:
            lines += [f"  - id: deny_{i}", f"    when: \"args.to == 'blocked_{i}@example.com'\"",
                      "    effect: deny"]
    lines += ["  - id: allow_send_email", "    tools: [send_email]", "    effect: allow"]
    if conditional_match:
        lines += ["    when: \"args.to == 'a@example.com'\""]
    return "\n".join(lines) + "\n"


def measure(fn: Callable[[], object], iterations: int, warmup: int,
            repeat: int) -> dict[str, float]:
    """Median over ``repeat`` rounds of each round's p50 and p99 (this VM is noisy)."""
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    rounds = []
    for _ in range(repeat):
        samples = []
        for _ in range(iterations // repeat):
            t0 = clock()
            fn()
            samples.append(clock() - t0)
        samples.sort()
        rounds.append((samples[len(samples) // 2], samples[int(len(samples) * 0.99)],
                       len(samples) / (sum(samples) / 1e9)))
    p50s = sorted(r[0] for r in rounds)
    return {"p50_us": statistics.median(p50s) / 1000,
            "p50_min_us": p50s[0] / 1000, "p50_max_us": p50s[-1] / 1000,
            "p99_us": statistics.median(r[1] for r in rounds) / 1000,
            "per_sec": statistics.median(r[2] for r in rounds)}


def run_bastion(n_rules: int, audit: bool, via: str, iterations: int, warmup: int,
                conditional_match: bool = True, repeat: int = 5) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        kernel = Kernel.from_text(policy(n_rules, conditional_match=conditional_match),
                                  audit=str(Path(tmp) / "audit.db") if audit else False)
        with kernel:
            if via == "evaluate":
                action = Action(tool="send_email", args=CALL)

                def call() -> object:
                    return kernel.evaluate(action)

                assert kernel.evaluate(action).allowed
            else:
                @govern(kernel)
                def send_email(to: str, body: str) -> str:
                    return "sent"

                def call() -> object:
                    return send_email(to="a@example.com", body="hi")

                assert call() == "sent"
            stats = measure(call, iterations, warmup, repeat)
            if audit:
                kernel.audit.flush()
                written = kernel.audit.stats.written
                calls = iterations // repeat * repeat + warmup + 1
                expected = calls * (1 if via == "evaluate" else 2)
                assert written == expected, (written, expected)
    return {"impl": "bastion", "rules": n_rules, "audit": audit, "via": via,
            "match": "conditional" if conditional_match else "tool-only", **stats}


def run_reference(n_rules: int, audit: bool, iterations: int) -> dict[str, object] | None:
    python = ROOT / ".venv-ref" / "bin" / "python"
    if not python.exists():
        return None
    out = subprocess.run([str(python), str(HERE / "_ref_agt.py"), "--rules", str(n_rules),
                          "--audit", "on" if audit else "off", "--iterations", str(iterations)],
                         capture_output=True, text=True, check=True)
    row: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def _range(r: dict[str, object]) -> str:
    return f"{float(r['p50_min_us']):.1f}-{float(r['p50_max_us']):.1f}"  # type: ignore[arg-type]


def import_time_ms(runs: int = 7) -> float:
    best = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", "import time; t=time.perf_counter(); "
                              "import bastion; print(time.perf_counter()-t)"],
                             capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": str(ROOT / "src")})
        best.append(float(out.stdout) * 1000)
    return statistics.median(best)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5, help="rounds per row (median reported)")
    ap.add_argument("--no-reference", action="store_true")
    opts = ap.parse_args()
    rows = []
    print(f"bastion {bastion.__version__}, python {sys.version.split()[0]}, "
          f"{opts.iterations} calls per row (median of per-call times)\n")
    header = f"{'impl':8} {'rules':>5} {'audit':>5} {'via':9} {'match':11} " \
             f"{'p50 µs':>8} {'(range)':>13} {'p99 µs':>8} {'calls/s':>9} {'ref p50':>8} " \
             f"{'speed-up':>8}"
    print(header)
    print("-" * len(header))
    for n in (1, 50):
        for audit in (True, False):
            ref = None if opts.no_reference else run_reference(n, audit, opts.iterations)
            if ref:
                rows.append(ref)
            for via in ("govern", "evaluate"):
                for cond in (True, False):
                    r = run_bastion(n, audit, via, opts.iterations, opts.warmup, cond,
                                    opts.repeat)
                    if ref:
                        r["reference_p50_us"] = ref["p50_us"]
                        r["speedup_p50"] = float(ref["p50_us"]) / float(r["p50_us"])
                    rows.append(r)
                    ref_txt = f"{ref['p50_us']:8.1f} {r['speedup_p50']:7.1f}x" if ref else ""
                    print(f"{'bastion':8} {n:5} {audit!s:>5} {via:9} {r['match']:11} "
                          f"{r['p50_us']:8.2f} {_range(r):>13} {r['p99_us']:8.2f} "
                          f"{r['per_sec']:9.0f} {ref_txt}")
    imp = import_time_ms()
    raw = next(r for r in rows if r["impl"] == "bastion" and r["via"] == "evaluate"
               and not r["audit"] and r["rules"] == 50 and r["match"] == "conditional")
    print(f"\nimport bastion: {imp:.1f} ms (median of 7 fresh processes)")
    print(f"raw decisions/s on one core (evaluate, 50 rules, audit off): {raw['per_sec']:.0f}")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "kernel.json").write_text(json.dumps({"rows": rows, "import_ms": imp}, indent=2))
    (out / "kernel.html").write_text(html_report(rows, imp))
    print(f"report: {out / 'kernel.html'}")


def html_report(rows: list[dict[str, object]], imp: float) -> str:
    """A self-contained page: p50 per configuration as horizontal bars, bastion beside the
    reference, on a log scale (the two differ by more than an order of magnitude)."""
    import html
    import math

    bars, y = [], 30
    top = max(float(r["p50_us"]) for r in rows)  # type: ignore[arg-type]
    for r in rows:
        p50 = float(r["p50_us"])  # type: ignore[arg-type]
        width = 40 + 600 * math.log10(1 + p50) / math.log10(1 + top)
        ours = r["impl"] == "bastion"
        label = (f"{r['impl']} · {r['rules']} rules · audit {'on' if r['audit'] else 'off'}"
                 + (f" · {r['via']} · {r['match']}" if ours else " · govern"))
        color = "#2b6cb0" if ours else "#c05621"
        bars.append(f'<text x="0" y="{y + 12}" font-size="12">{html.escape(label)}</text>'
                    f'<rect x="330" y="{y}" width="{width:.0f}" height="16" fill="{color}"/>'
                    f'<text x="{336 + width:.0f}" y="{y + 12}" font-size="12">{p50:.1f} µs'
                    "</text>")
        y += 22
    return ("<!doctype html><meta charset=utf-8><title>bastion kernel benchmark</title>"
            "<body style='font-family:sans-serif'><h1>One decision: p50 latency</h1>"
            f"<p>Lower is better; log scale. import bastion: {imp:.0f} ms. "
            "Blue: bastion; orange: the reference (agent-governance-toolkit-core 5.0.0).</p>"
            f"<svg width='1100' height='{y + 10}'>{''.join(bars)}</svg></body>")


if __name__ == "__main__":
    main()
