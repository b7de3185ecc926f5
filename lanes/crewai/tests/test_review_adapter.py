"""Review findings for bastion.adapters.crewai (each test asserts the correct behaviour)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FINAL_NATIVE, POLICY, ScriptedLLM, Tools, crew_for, native

from bastion import Kernel
from bastion.adapters.crewai import Governed

CATALOG = """\
version: 1
tools:
  lookup: {class: read, side_effects: false, result: {handling: quarantine}}
"""


def test_catalog_quarantine_reaches_the_model(tmp_path: Path, tools: Tools) -> None:
    with Kernel.from_text(POLICY, audit=tmp_path / "a.db", state=tmp_path / "s.db",
                          catalog=CATALOG) as kernel:
        llm = ScriptedLLM(model="scripted",
                          script=[native("lookup", query="otter"), FINAL_NATIVE])
        with Governed(kernel, agent={"id": "a"}, session={"id": "s"}):
            crew_for(llm, tools).kickoff()
    assert tools.ran == [("lookup", {"query": "otter"})]
    seen = llm.text_after(1)
    # the catalog says the result is quarantined: the model gets a handle, never the text
    assert "found otter" not in seen, seen
