"""Review findings for bastion.adapters.dify (each test asserts the correct behaviour)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import POLICY, FakeDaemon, Runner, call

from bastion import Kernel
from bastion.adapters.dify import Governed

CATALOG = """\
version: 1
tools:
  lookup: {class: read, side_effects: false, result: {handling: quarantine}}
"""


def test_catalog_quarantine_reaches_the_model(runner: Runner, daemon: FakeDaemon,
                                              tmp_path: Path) -> None:
    with Kernel.from_text(POLICY, audit=tmp_path / "a.db", state=tmp_path / "s.db",
                          catalog=CATALOG) as kernel:
        runner.strategy.governed = Governed(kernel, agent={"id": "a"}, session={"id": "s"})
        runner.run(call("lookup", query="otter"), "all done")
    assert daemon.ran == [("lookup", {"query": "otter"})]
    # the catalog says the result is quarantined: the model gets a handle, never the text
    assert "found otter" not in daemon.said(1), daemon.said(1)
