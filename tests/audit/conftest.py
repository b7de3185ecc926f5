"""Fixtures for the audit tests: a log path and a plain connection to it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def raw(db: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to the log file, as an attacker (or a second reader) would have."""
    conn = sqlite3.connect(db, isolation_level=None)
    yield conn
    conn.close()
