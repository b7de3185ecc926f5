from __future__ import annotations

from collections.abc import Iterator

import pytest
from flow_support import CATALOG, PACK, REVIEW_CATALOG

import bastion


@pytest.fixture
def kernel() -> Iterator[bastion.Kernel]:
    k = bastion.Kernel.from_policy(PACK, catalog=CATALOG)
    yield k
    k.close()


@pytest.fixture
def k() -> Iterator[bastion.Kernel]:
    """The default pack with the review files' catalog (``REVIEW_CATALOG``)."""
    with bastion.Kernel.from_policy(PACK, catalog=REVIEW_CATALOG) as kernel:
        yield kernel
