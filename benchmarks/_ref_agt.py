#!/usr/bin/env python3
"""Reference benchmark: agent-governance-toolkit-core==5.0.0 (agentmesh.governance.govern).

Run with the reference venv, e.g.:
    .venv-ref/bin/python benchmarks/_ref_agt.py --rules 50 --audit on

Prints ONE JSON line to stdout:
    {"impl":"agt","rules":N,"audit":bool,"p50_us":..,"p99_us":..,"per_sec":..}

Policy: N rules in AGT's own YAML format. Rules 1..N-1 are deny rules that do
not match the benchmarked call (alternating tool-name and argument conditions);
rule N is the only matching rule and ALLOWS send_email(to="a@example.com",
body="hi"). default_action is deny. Stdlib + the reference package only.
"""
import argparse
import json
import sys
import time
import warnings

_NET_EVENTS = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
               "socket.gethostbyaddr", "socket.sendto", "socket.bind", "urllib.Request"}
net_attempts = []


def _no_network(event, args):
    # Refuse (and record) any network activity by the reference package.
    if event in _NET_EVENTS:
        net_attempts.append((event, repr(args)[:200]))
        raise RuntimeError(f"network access blocked in benchmark: {event} {args!r}")


sys.addaudithook(_no_network)
# The reference emits several DeprecationWarnings on import (legacy package
# names agentmesh-platform / agent-os-kernel / agent-hypervisor ...).
warnings.filterwarnings("ignore", category=DeprecationWarning)

_t0 = time.perf_counter()
from agentmesh.governance import GovernanceDenied, govern  # noqa: E402

IMPORT_S = time.perf_counter() - _t0

CALL = {"to": "a@example.com", "body": "hi"}


def build_policy_yaml(n_rules: int) -> str:
    lines = [
        "apiVersion: governance.toolkit/v1",
        f"name: bench-policy-{n_rules}",
        "default_action: deny",
        "rules:",
    ]
    for i in range(1, n_rules):
        # Non-matching deny rules: alternate a tool-name and an argument condition.
        cond = (f"action.type == 'blocked_tool_{i}'" if i % 2
                else f"to.value == 'blocked_{i}@example.com'")
        lines += [f"  - name: deny_{i}", f'    condition: "{cond}"', "    action: deny"]
    # Last rule: the only one that matches our call -> allow.
    lines += ["  - name: allow_send_email",
              "    condition: \"to.value == 'a@example.com'\"",
              "    action: allow"]
    return "\n".join(lines) + "\n"


def send_email(to, body):
    return len(body)


def sanity_check(policy: str, n_rules: int) -> None:
    g = govern(send_email, policy=policy, audit=True)
    assert g(**CALL) == 2, "expected allowed call to run the tool"
    assert g.audit_log is not None and len(g.audit_log._chain._entries) == 1
    # Anything not matching the allow rule falls to default deny.
    denied = [{"to": "x@example.com", "body": "hi"}]
    if n_rules >= 3:  # rule deny_2 matches this argument -> explicit deny
        denied.append({"to": "blocked_2@example.com", "body": "hi"})
    for kw in denied:
        try:
            g(**kw)
        except GovernanceDenied:
            continue
        raise AssertionError(f"expected GovernanceDenied for {kw}")
    assert govern(send_email, policy=policy, audit=False).audit_log is None


def pct(sorted_vals, q):
    return sorted_vals[min(len(sorted_vals) - 1, round(q * (len(sorted_vals) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=1)
    ap.add_argument("--audit", choices=["on", "off"], default="on")
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--print-policy", action="store_true", help="dump YAML and exit")
    a = ap.parse_args()
    if a.rules < 1 or a.iterations < 1:
        ap.error("--rules and --iterations must be >= 1")

    policy = build_policy_yaml(a.rules)
    if a.print_policy:
        sys.stdout.write(policy)
        return
    sanity_check(policy, a.rules)

    audit = a.audit == "on"
    fn = govern(send_email, policy=policy, audit=audit)
    kw = CALL
    for _ in range(a.warmup):
        fn(**kw)

    pc = time.perf_counter_ns
    samples = [0] * a.iterations
    for i in range(a.iterations):
        t = pc()
        fn(**kw)
        samples[i] = pc() - t

    if audit:  # audit on => one in-memory Merkle-chained entry per call
        assert len(fn.audit_log._chain._entries) == a.warmup + a.iterations
    if net_attempts:
        print(f"network attempts blocked: {net_attempts}", file=sys.stderr)

    samples.sort()
    print(json.dumps({
        "impl": "agt",
        "rules": a.rules,
        "audit": audit,
        "p50_us": round(pct(samples, 0.50) / 1000, 2),
        "p99_us": round(pct(samples, 0.99) / 1000, 2),
        "per_sec": round(a.iterations / (sum(samples) / 1e9), 1),
    }))
    print(f"[agt] import {IMPORT_S:.2f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
