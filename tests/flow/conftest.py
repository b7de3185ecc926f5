from __future__ import annotations

from collections.abc import Iterator

import pytest
from flow_support import CATALOG, PACK

import bastion


@pytest.fixture
def kernel() -> Iterator[bastion.Kernel]:
    k = bastion.Kernel.from_policy(PACK, catalog=CATALOG)
    yield k
    k.close()
