"""Review of the fixes in 848f1c5 (shared backends), 6be2726 (kernel/CLI/gateway fixes) and
5d23b47 (adapters): each test shows a problem left in (the same bug by a slightly different
input) or brought by one of those fixes; each failed before its fix. Redis cases need
``BASTION_TEST_REDIS`` (they skip without it) and use a key prefix of their own (``redis_url`` in
``tests/conftest.py``)."""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from bastion import Kernel
from bastion.kernel._flowfacts import FOREVER, SharedFacts
from bastion.kernel._redact import redact
from bastion.state import open_store
from bastion.state._store import SQLiteStore

NOW = 1_800_000_000.0
ALLOW = "version: 1\nrules:\n  - {id: ok, effect: allow}\n"


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return str(request.getfixturevalue("redis_url"))


# -- 1. counters: "never back to an older window" across window lengths ----------------------

def test_a_rate_limit_lengthened_by_a_policy_change_resets_in_its_next_window(
        store_url: str) -> None:
    store: Any = open_store(store_url)
    try:
        key = "rate:mail:agent:a1"
        for _ in range(3):  # the old policy: 3 per minute, spent
            assert store.take(key, 3, 60, NOW)[0]
        assert not store.take(key, 3, 60, NOW)[0]
        # the new policy (same rule id): 3 per hour; two hours later is a new hour window
        ok, n = store.take(key, 3, 3600, NOW + 2 * 3600)
        assert ok, f"still denied {n} calls into a window two hours on"
    finally:
        store.close()


# -- 2. without_password: a password with a '/' ------------------------------------------------

def test_a_password_holding_a_slash_is_not_printed() -> None:
    from bastion._errors import without_password

    shown = without_password("audit target 'postgresql://app:s3cr/t+K=@db:5432/audit'")
    assert "s3cr" not in shown, shown


# -- 3. redaction: types of values the redaction did not touch ------------------------------

@dataclasses.dataclass
class Query:
    text: str
    options: dict[str, list[str]]


def test_a_redaction_leaves_an_untouched_dict_subclass_field_as_it_was() -> None:
    opts: collections.defaultdict[str, list[str]] = collections.defaultdict(list)
    opts["lang"].append("en")
    q = Query("weather", opts)
    out = redact({"q": q, "token": "sk-live-123"}, (), r"sk-live-\d+")
    assert out["token"] == "[REDACTED]"
    assert type(out["q"].options) is collections.defaultdict, type(out["q"].options)
    assert out["q"] is q  # nothing in it was redacted


class Pair(tuple):  # type: ignore[type-arg]
    """A tuple subclass built from its items (not from one iterable)."""

    def __new__(cls, *items: Any) -> Pair:
        return super().__new__(cls, items)


def test_a_redaction_does_not_reshape_a_tuple_subclass() -> None:
    out = redact({"pair": Pair("a", "b"), "token": "sk-live-1"}, (), r"sk-live-\d+")
    assert tuple(out["pair"]) == ("a", "b"), repr(out["pair"])


# -- 4. flow facts after the end of a session ------------------------------------------------

class _EndsBetween(SQLiteStore):
    """The session is ended (by another tracker on the store) between the tracker's fact and
    its label counters: an end_session between the writes."""

    other: SharedFacts | None = None

    def add(self, key: str, amount: int, window_s: int, now: float) -> int:
        if key.startswith("flow:l:s1:") and self.other is not None:
            other, self.other = self.other, None
            other.tombstone("s1")
        return super().add(key, amount, window_s, now)


def test_labels_of_a_result_arriving_at_the_end_are_not_kept(tmp_path: Path) -> None:
    store = _EndsBetween(str(tmp_path / "s.db"))
    mine = SharedFacts(store, lambda: NOW, share=True)
    store.other = SharedFacts(store, lambda: NOW, share=True)
    mine._count("s1", ["untrusted"], {"k": "result", "labels": ["untrusted"]})
    left = store.counts("flow:l:s1:", FOREVER, NOW)
    assert left == {}, left


class _CountingReads(SQLiteStore):
    reads = 0

    def count(self, key: str, window_s: int, now: float) -> int:
        self.reads += 1
        return super().count(key, window_s, now)


def test_recording_a_fact_on_a_ceiling_store_costs_no_extra_read(tmp_path: Path) -> None:
    store = _CountingReads(str(tmp_path / "s.db"))
    facts = SharedFacts(store, lambda: NOW, share=True)
    assert facts._ceiling  # bastion's own store takes the ceiling atomically
    store.reads = 0
    assert facts._count("s1", (), {"k": "call", "tool": "search", "carried": []}) == 1
    assert store.reads == 0, f"{store.reads} extra count() per recorded fact"


# -- 5. fork handlers accumulate ---------------------------------------------------------------

def test_closed_kernels_leave_no_fork_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    registered: list[object] = []
    monkeypatch.setattr(os, "register_at_fork", lambda **hooks: registered.append(hooks))
    for _ in range(20):  # a kernel per tenant, per reload, per test
        Kernel.from_text(ALLOW, audit=False).close()
    assert registered == [], f"{len(registered)} fork handlers registered, never removed"
