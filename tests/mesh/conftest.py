"""Fixtures for the mesh tests: a fixed clock, seeded identities and a mesh store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_fixtures import ident

from bastion.mesh import Identity, SQLiteMeshStore, open_mesh_store


@pytest.fixture
def root() -> Identity:
    return ident(1)


@pytest.fixture
def alice() -> Identity:
    return ident(2)


@pytest.fixture
def bob() -> Identity:
    return ident(3)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteMeshStore]:
    s = open_mesh_store(tmp_path / "mesh.db")
    yield s
    s.close()
