"""What the end-to-end CLI review tests share: the installed command, run as a user runs it,
and the policy they run it against."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BASTION = Path(sys.executable).with_name("bastion")

POLICY = """\
version: 1
name: review-cli
rules:
  - id: transfers
    tools: [transfer]
    effect: allow
  - id: big-transfer
    tools: [transfer]
    when: "args.amount > 1000"
    effect: require_approval
  - id: send
    tools: [send]
    effect: allow
  - id: mask-card
    tools: [send]
    effect: redact
    redact: [args.card]
"""


def bastion(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BASTION), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "200"})
