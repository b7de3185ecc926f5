"""Review of the Redis state store (``bastion.state._redis``) against the SQLite reference.

Each test asserts the behaviour the store should have and is marked ``xfail(strict=True)`` while
the store still differs; run with ``--runxfail`` to see each failure.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from bastion import ConfigError, StateError
from bastion.state import open_store

FOREVER = 1 << 40
NOW = 1_750_000_000.0


def _admin(redis_url: str) -> Any:
    import redis

    return redis.Redis.from_url(redis_url.split("?")[0])


def _prefix(redis_url: str) -> str:
    return "{" + redis_url.rsplit("prefix=", 1)[1].split("&")[0] + "}:"


def test_counters_stay_exact_past_2_53(redis_url: str, tmp_path: Path) -> None:
    big = 1 << 53
    results = {}
    for name, url in (("sqlite", f"sqlite:///{tmp_path / 's.db'}"), ("redis", redis_url)):
        store = open_store(url)
        try:
            results[name] = (
                store.add("n", big, FOREVER, NOW),
                store.add("n", 1, FOREVER, NOW),  # HINCRBY's exact reply rounded by Lua
                store.count("n", FOREVER, NOW),
                store.take("n", big + 3, FOREVER, NOW),  # 2**53+1 < 2**53+3: allowed
                store.add("m", big, FOREVER, NOW),
                store.take("m", big + 1, FOREVER, NOW),  # limit 2**53+1 read as 2**53: refused
            )
        finally:
            store.close()
    expected = (big, big + 1, big + 1, (True, big + 2), big, (True, big + 1))
    assert results["sqlite"] == expected  # the reference
    assert results["redis"] == expected


def test_an_expired_counter_leaves_nothing_behind(redis_url: str) -> None:
    store = open_store(redis_url)
    admin = _admin(redis_url)
    prefix = _prefix(redis_url)
    try:
        for i in range(5):  # e.g. `limit: N/second per session`, one key per session
            assert store.take(f"rate:r:session:s{i}", 5, 1, time.time()) == (True, 1)
        end = time.monotonic() + 20  # the counters expire 3 s after their last change
        while time.monotonic() < end and admin.exists(
                *[f"{prefix}c:rate:r:session:s{i}" for i in range(5)]):
            time.sleep(0.1)
        assert not admin.exists(*[f"{prefix}c:rate:r:session:s{i}" for i in range(5)])
        # the next write of any expiring counter prunes up to 16 expired names from the indexes
        assert store.take("rate:r:session:next", 5, 60, time.time()) == (True, 1)
        left = sorted(k.decode() for k in admin.scan_iter(match=prefix + "c:*"))
        members = [m.decode() for m in admin.zrange(prefix + "cx", 0, -1)]
        expiring = [m.decode() for m in admin.zrange(prefix + "cxe", 0, -1)]
        assert left == [f"{prefix}c:rate:r:session:next"], left  # nothing of them remains
        assert members == expiring == ["rate:r:session:next"], (members, expiring)
    finally:
        admin.close()
        store.close()


@pytest.mark.parametrize("url", [
    "unix:///run/redis.sock?db=0&password=hunter2&prefix={x}",
    "redis://127.0.0.1:6379/0?password=hunter2&prefix=",
    "redis://127.0.0.1:6379/db1?password=hunter2",
])
def test_a_config_error_never_shows_a_query_password(url: str) -> None:
    pytest.importorskip("redis", reason="redis is not installed (extra 'redis')")
    with pytest.raises(ConfigError) as info:
        open_store(url)
    assert "hunter2" not in str(info.value), str(info.value)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:99999/0", "redis://u:pw@127.0.0.1:port/0"])
def test_a_bad_port_is_a_config_error(url: str) -> None:
    pytest.importorskip("redis", reason="redis is not installed (extra 'redis')")
    try:
        open_store(url).close()
        error: BaseException | None = None
    except Exception as exc:  # which exception is the point
        error = exc
    assert isinstance(error, ConfigError), f"{type(error).__name__}: {error}"


def test_a_closed_store_refuses_and_holds_no_connection(redis_url: str) -> None:
    name = f"review{uuid.uuid4().hex[:10]}"
    store = open_store(f"{redis_url}&client_name={name}")
    admin = _admin(redis_url)

    def connections() -> int:
        return sum(1 for c in admin.client_list() if c.get("name") == name)

    try:
        assert store.take("rate:k", 5, 60, NOW) == (True, 1)
        assert connections() >= 1
        store.close()
        store.close()  # a kernel may close twice
        end = time.monotonic() + 10
        while time.monotonic() < end and connections():
            time.sleep(0.05)
        assert connections() == 0  # close() let go of everything
        outcomes = []
        for use in (store.flags, lambda: store.take("rate:k", 5, 60, NOW)):
            try:
                outcomes.append(repr(use()))
            except StateError:
                outcomes.append("StateError")  # what SQLite raises once closed
        time.sleep(0.2)
        held = connections()
        assert (outcomes, held) == (["StateError", "StateError"], 0)
    finally:
        store.close()
        admin.close()

