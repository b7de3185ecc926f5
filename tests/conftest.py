"""Fixtures every test folder may use: the shared backends that ``.ci/run`` names."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

REDIS_ENV = "BASTION_TEST_REDIS"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """``BASTION_TEST_REDIS`` with a key prefix of its own (``?prefix=``), whose keys are deleted
    afterwards; skips, saying why, where the variable is not set."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set: the Redis state store is not tested "
                    f"(e.g. {REDIS_ENV}=redis://127.0.0.1:6379/0)")
    redis = pytest.importorskip("redis", reason="redis is not installed (extra 'redis')")
    prefix = f"bt{os.getpid()}x{uuid.uuid4().hex[:8]}"
    yield f"{url}{'&' if '?' in url else '?'}prefix={prefix}"
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match="{" + prefix + "}:*"))
    if keys:
        client.delete(*keys)
    client.close()
