"""Shared pieces of the flow tests: the default pack, a small catalog, an Action builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bastion

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "policies" / "flow-default.yaml"

CATALOG = """\
version: 1
tools:
  read_inbox: {class: read, side_effects: false,
               result: {integrity: untrusted, confidentiality: internal}}
  read_secrets: {class: read, side_effects: false,
                 result: {integrity: trusted, confidentiality: secret}}
  get_balance: {class: read, side_effects: false, result: {integrity: trusted}}
  send_money: {class: write, sinks: [recipient, amount]}
  send_email: {class: egress, sinks: [to, body]}
  run_python: {class: code, sinks: [code]}
"""


def act(stage: str, tool: str | None = None, session: str = "s1", **kw: Any) -> bastion.Action:
    return bastion.Action(tool=tool, stage=stage, agent={"id": "agent-1"},
                          session={"id": session}, **kw)
