"""AuditLog: entry format, batching, durability, back-pressure, failure, reopening."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from audit_support import MAC_KEY, SIGNING_KEY, event
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion._errors import AuditError, ConfigError
from bastion.audit import AuditLog, latest_checkpoint, read_events, verify
from bastion.audit._merkle import entry_leaf_hash


def open_log(db: Path, **options: Any) -> AuditLog:
    return AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, **options)


def rows(conn: sqlite3.Connection) -> list[tuple[int, bytes, str, bytes]]:
    return conn.execute("SELECT seq, body, mac, leaf FROM entries ORDER BY seq").fetchall()


def test_entries_are_chained_canonical_and_fully_maced(db: Path, raw: sqlite3.Connection) -> None:
    with open_log(db) as log:
        log.append(event(0, args={"b": 1, "a": [1, "é"]}))
        log.append(event(1))
    stored = rows(raw)
    assert [r[0] for r in stored] == [0, 1]
    prev = "0" * 64
    for seq, body, mac, leaf in stored:
        assert body == json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"),
                                  ensure_ascii=False).encode()
        fields = json.loads(body)
        assert (fields["v"], fields["seq"], fields["prev"]) == (1, seq, prev)
        assert "mac" not in fields
        assert mac == hmac.new(MAC_KEY, body, hashlib.sha256).hexdigest()
        assert leaf == entry_leaf_hash(body, bytes.fromhex(mac))
        prev = mac
    assert json.loads(stored[0][1])["args"] == {"a": [1, "é"], "b": 1}


def test_flush_commits_all_appended_and_checkpoints(db: Path, raw: sqlite3.Connection) -> None:
    log = open_log(db)
    for i in range(300):
        log.append(event(i))
    log.flush()
    assert raw.execute("SELECT count(*) FROM entries").fetchone() == (300,)
    assert raw.execute("SELECT max(tree_size) FROM checkpoints").fetchone() == (300,)
    stats = log.stats
    assert (stats.appended, stats.written, stats.failed, stats.queue_depth) == (300, 300, 0, 0)
    log.flush()  # nothing new: no extra checkpoint
    assert log.stats.checkpoints == raw.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    log.close()
    assert verify(db, key=MAC_KEY).ok


def test_checkpoint_every_n_with_injected_clock(db: Path, raw: sqlite3.Connection) -> None:
    ticks = iter(range(1000, 2000))
    with open_log(db, durable=True, checkpoint_every=10, clock=lambda: next(ticks)) as log:
        for i in range(35):
            log.append(event(i))
        assert log.stats.checkpoints == 3
    sizes = [r[0] for r in raw.execute("SELECT tree_size FROM checkpoints ORDER BY id")]
    assert sizes == [10, 20, 30, 35]  # the last one written by close
    bodies = [json.loads(r[0]) for r in raw.execute("SELECT body FROM checkpoints ORDER BY id")]
    assert [b["ts"] for b in bodies] == [1000, 1001, 1002, 1003]
    assert verify(db, key=MAC_KEY).checkpoints == 4


def test_eight_threads_yield_a_gap_free_verifiable_log(db: Path) -> None:
    log = open_log(db, batch_max=64)

    def writer(t: int) -> None:
        for i in range(500):
            log.append({"kind": "decision", "id": f"{t}-{i}", "ts": i, "thread": t})

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    report = verify(db, key=MAC_KEY)
    assert report.ok and report.entries == 4000, report
    events = list(read_events(db))
    assert [e["seq"] for e in events] == list(range(4000))
    assert {e["id"] for e in events} == {f"{t}-{i}" for t in range(8) for i in range(500)}
    for t in range(8):  # each thread's events keep the order it appended them in
        assert [e["ts"] for e in events if e["thread"] == t] == list(range(500))


def test_durable_append_is_committed_before_it_returns(db: Path, raw: sqlite3.Connection) -> None:
    with open_log(db, durable=True) as log:
        for i in range(5):
            log.append(event(i))
            assert raw.execute("SELECT count(*) FROM entries").fetchone() == (i + 1,)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_back_pressure_blocks_and_loses_nothing(db: Path) -> None:
    log = open_log(db, queue_max=8, batch_max=4)
    seal = log._chain.seal

    def slow_seal(bodies: list[Any]) -> Any:
        time.sleep(0.002)
        return seal(bodies)

    log._chain.seal = slow_seal  # type: ignore[method-assign]
    depths: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.0005):
            depths.append(log.stats.queue_depth)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.perf_counter()
    for i in range(400):
        log.append(event(i))
    blocked_for = time.perf_counter() - start
    done.set()
    watcher.join()
    log.close()
    assert max(depths) <= 9
    assert blocked_for > 0.1  # 100 batches of 4 at 2 ms each: the caller had to wait
    report = verify(db, key=MAC_KEY)
    assert report.ok and report.entries == 400


def test_failed_write_fails_closed(db: Path) -> None:
    log = open_log(db)
    log.append(event(0))
    log.flush()
    with log._db_lock:
        log._conn.execute("PRAGMA query_only=1")  # every later write fails, like a dead disk
    log.append(event(1))
    with pytest.raises(AuditError, match="unhealthy"):
        log.flush()
    assert not log.healthy
    assert log.stats.failed == 1 and log.stats.written == 1
    with pytest.raises(AuditError, match="unhealthy"):
        log.append(event(2))
    with pytest.raises(AuditError):
        log.close()
    log.close()  # idempotent
    assert verify(db, key=MAC_KEY).entries == 1  # what was committed is intact


def test_failed_durable_write_raises_from_append(db: Path) -> None:
    log = open_log(db, durable=True)
    log.append(event(0))
    with log._db_lock:
        log._conn.execute("PRAGMA query_only=1")
    with pytest.raises(AuditError, match="unhealthy"):
        log.append(event(1))
    assert not log.healthy and log.stats.failed == 1
    with pytest.raises(AuditError):
        log.append(event(2))
    with pytest.raises(AuditError):
        log.close()


def test_reopen_continues_the_chain(db: Path) -> None:
    with AuditLog.open(db, checkpoint_every=7) as log:
        for i in range(20):
            log.append(event(i))
    first = latest_checkpoint(db)
    with AuditLog.open(f"sqlite:///{db}", checkpoint_every=7) as log:
        for i in range(20, 33):
            log.append(event(i))
    events = list(read_events(db))
    assert [e["seq"] for e in events] == list(range(33))
    assert events[20]["prev"] == events[19]["mac"]
    report = verify(db)
    assert report.ok and report.entries == 33
    assert first is not None and first["tree_size"] == 20


def test_default_key_files_sit_beside_the_log(db: Path) -> None:
    AuditLog.open(db).close()
    for name in ("audit.db.key", "audit.db.sign.pem"):
        path = db.parent / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_reopen_refuses_a_wrong_or_missing_key(db: Path) -> None:
    with AuditLog.open(db) as log:
        log.append(event(0))
    with pytest.raises(AuditError, match="wrong mac key"):
        AuditLog.open(db, key=b"x" * 32)
    (db.parent / "audit.db.key").unlink()
    with pytest.raises(AuditError, match="missing"):
        AuditLog.open(db)
    assert not (db.parent / "audit.db.key").exists()


def test_reopen_refuses_a_tampered_tail(db: Path, raw: sqlite3.Connection) -> None:
    with open_log(db) as log:
        for i in range(10):
            log.append(event(i))
    raw.execute("UPDATE entries SET body = replace(body, 'd9', 'd8') WHERE seq = 9")
    with pytest.raises(AuditError, match="entry 9: mac mismatch"):
        open_log(db)


def test_reopen_refuses_a_truncated_log(db: Path, raw: sqlite3.Connection) -> None:
    with open_log(db) as log:
        for i in range(10):
            log.append(event(i))
    raw.execute("DELETE FROM entries WHERE seq = 9")
    with pytest.raises(AuditError, match="truncated or rewritten"):
        open_log(db)
    raw.execute("DELETE FROM entries WHERE seq = 4")
    with pytest.raises(AuditError, match="missing"):
        open_log(db)


def test_a_new_signing_key_is_registered(db: Path) -> None:
    with open_log(db) as log:
        log.append(event(0))
    other = Ed25519PrivateKey.generate()
    with AuditLog.open(db, key=MAC_KEY, signing_key=other) as log:
        log.append(event(1))
    assert verify(db, key=MAC_KEY).ok
    assert not verify(db, key=MAC_KEY, public_key=SIGNING_KEY.public_key()).ok


def test_malformed_bodies_keep_their_place(db: Path) -> None:
    with open_log(db) as log:
        log.append(event(0))
        log.append({"kind": "decision", "id": "bad", "blob": object()})
        log.append({"kind": "decision", "id": "sneaky", "seq": 99})
        log.append(["not", "a", "dict"])  # type: ignore[arg-type]
        log.append(event(4))
        log.flush()
        assert log.stats.malformed == 3 and log.stats.written == 5
    events = list(read_events(db))
    assert [e["kind"] for e in events] == ["decision"] + ["audit.malformed"] * 3 + ["decision"]
    assert [e["id"] for e in events[1:4]] == ["bad", "sneaky", None]
    assert "reserved field" in events[2]["error"]
    assert verify(db, key=MAC_KEY).ok


def test_in_memory_log_is_read_through_its_object() -> None:
    with AuditLog.open(None) as log:
        for i in range(5):
            log.append(event(i))
        log.flush()
        report = verify(log)
        assert report.ok and report.entries == 5
        assert [e["seq"] for e in read_events(log, since_seq=3)] == [3, 4]
        with pytest.raises(AuditError, match="in-memory"):
            verify(":memory:")
    with pytest.raises(AuditError, match="closed"):
        log.append(event(5))
    with pytest.raises(AuditError, match="closed"):
        verify(log)


@pytest.mark.parametrize("target", ["postgresql://u@h/db", "s3://bucket/x"])
def test_unknown_backends_are_config_errors(target: str) -> None:
    with pytest.raises(ConfigError, match="not available yet"):
        AuditLog.open(target)


@pytest.mark.parametrize("option", ["batch_max", "queue_max", "checkpoint_every"])
def test_options_must_be_positive(db: Path, option: str) -> None:
    with pytest.raises(ConfigError, match=option):
        open_log(db, **{option: 0})


def test_a_file_that_is_not_a_log_is_an_audit_error(db: Path) -> None:
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(AuditError, match="cannot open"):
        open_log(db)


class LazyEvent(Mapping[str, Any]):
    """A body built only when the writer reads it, as the kernel's decision events are."""

    def __init__(self, i: int, *, broken: bool = False) -> None:
        self.i, self.broken = i, broken
        self.built_on: str | None = None

    def _body(self) -> dict[str, Any]:
        self.built_on = threading.current_thread().name
        if self.broken:
            raise RuntimeError("digest failed")
        return event(self.i)

    def __getitem__(self, key: str) -> Any:
        return self._body()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._body())

    def __len__(self) -> int:
        return len(self._body())


def test_lazy_mappings_are_built_on_the_writer_thread(db: Path) -> None:
    lazy, broken = LazyEvent(0), LazyEvent(1, broken=True)
    with open_log(db) as log:
        log.append(lazy)
        log.append(broken)
        log.append(event(2))
        log.flush()
        assert log.healthy and log.stats.malformed == 1
    assert lazy.built_on == "bastion-audit"
    events = list(read_events(db))
    assert [e["id"] for e in events] == ["d0", None, "d2"]
    assert events[1]["error"] == "digest failed"
