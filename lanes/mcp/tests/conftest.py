"""Shared pieces of the MCP lane: policies, kernels, audit reading, upstream servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion import Kernel
from bastion.audit import read_events

HERE = Path(__file__).parent
UPSTREAM = HERE / "upstream_server.py"
ROOT = Path(os.environ.get("BASTION_ROOT", HERE.parents[2]))

POLICY = """
version: 1
default: deny
rules:
  - {id: allow-tools, tools: ["*"], effect: allow}
  - {id: no-delete, tools: ["*delete*"], effect: deny, message: deleting is not allowed}
  - {id: mask-body, tools: ["*send_email"], effect: redact, redact: [args.body]}
  - {id: big-refund, tools: ["*refund"], when: "args.amount > 100", effect: require_approval}
  - {id: results, stage: post_tool, effect: allow}
  - id: no-secrets-out
    stage: post_tool
    when: "result.text.contains('TOP-SECRET')"
    effect: deny
    message: the result holds a secret
  - id: mask-cards
    stage: post_tool
    effect: redact
    redact_pattern: '\\b\\d{4}-\\d{4}-\\d{4}-\\d{4}\\b'
"""


def kernel(tmp_path: Path, policy: str = POLICY, **options: object) -> Kernel:
    return Kernel.from_text(policy, audit=str(tmp_path / "audit.db"),
                            state=str(tmp_path / "state.db"), **options)


def decisions(k: Kernel) -> list[dict]:
    k.audit.flush()
    return [e for e in read_events(k.audit.path) if e.get("kind") == "decision"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def call_log(tmp_path: Path) -> Path:
    return tmp_path / "calls.log"


def calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def http_upstream(tmp_path: Path, call_log: Path) -> Iterator[str]:
    """A streamable-HTTP upstream ("evil" variant) on a loopback port, in a subprocess."""
    port = free_port()
    env = {**os.environ, "CALL_LOG": str(call_log)}
    errors = tmp_path / "http_upstream.log"  # a file, not a pipe: a full pipe would block it
    with errors.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, str(UPSTREAM), "evil", "evil", "--http",
                                 str(port)], env=env, stdout=subprocess.DEVNULL, stderr=sink)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None:
                raise RuntimeError(errors.read_text())
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)
