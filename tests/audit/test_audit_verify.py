"""verify(): every kind of tampering is caught and the first bad entry is named."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from audit_support import MAC_KEY, SIGNING_KEY, event
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion._errors import AuditError
from bastion.audit import AuditLog, read_events, verify
from bastion.audit._keys import public_key_id, raw_public_key
from bastion.audit._merkle import CompactTree
from bastion.audit._store import sign_checkpoint

OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))


def build(db: Path, bodies: list[dict[str, Any]], *, every: int = 5) -> None:
    with AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, durable=True,
                       checkpoint_every=every) as log:
        for body in bodies:
            log.append(body)


@pytest.fixture
def log20(db: Path) -> Path:
    build(db, [event(i) for i in range(20)])
    return db


def check(db: Path, **options: Any) -> Any:
    return verify(db, key=MAC_KEY, **options)


def test_untouched_log_verifies(log20: Path) -> None:
    report = check(log20)
    assert report.ok and report.entries == 20 and report.checkpoints == 4
    assert (report.first_bad_seq, report.reason) == (None, None)
    assert check(log20, public_key=SIGNING_KEY.public_key()).ok
    assert verify(log20, key_path=str(log20) + ".missing.key", key=MAC_KEY).ok


def test_edited_body(log20: Path, raw: sqlite3.Connection) -> None:
    raw.execute("UPDATE entries SET body = replace(body, '\"d7\"', '\"d8\"') WHERE seq = 7")
    report = check(log20)
    assert not report.ok and report.first_bad_seq == 7 and report.entries == 7
    assert report.reason == "entry 7: mac mismatch (edited)"


def test_edited_mac(log20: Path, raw: sqlite3.Connection) -> None:
    raw.execute("UPDATE entries SET mac = 'é' || substr(mac, 2) WHERE seq = 3")
    assert check(log20).reason == "entry 3: mac mismatch (edited)"


def test_deleted_entry(log20: Path, raw: sqlite3.Connection) -> None:
    raw.execute("DELETE FROM entries WHERE seq = 11")
    report = check(log20)
    assert report.first_bad_seq == 11
    assert report.reason == "entry 11: expected seq 11, found 12 (deleted or reordered)"


def test_reordered_rows(log20: Path, raw: sqlite3.Connection) -> None:
    raw.execute("UPDATE entries SET seq = -1 WHERE seq = 4")
    raw.execute("UPDATE entries SET seq = 4 WHERE seq = 9")
    raw.execute("UPDATE entries SET seq = 9 WHERE seq = -1")
    report = check(log20)
    assert report.first_bad_seq == 4
    assert report.reason == "entry 4: expected seq 4, found 9 (deleted or reordered)"


def test_inserted_copy(log20: Path, raw: sqlite3.Connection) -> None:
    raw.execute("INSERT INTO entries SELECT 20, body, mac, leaf FROM entries WHERE seq = 6")
    report = check(log20)
    assert report.first_bad_seq == 20
    assert report.reason == "entry 20: expected seq 20, found 6 (inserted or reordered)"


def test_truncated_tail(log20: Path, raw: sqlite3.Connection) -> None:
    raw.execute("DELETE FROM entries WHERE seq >= 17")
    report = check(log20)
    assert report.first_bad_seq == 17 and report.entries == 17
    assert report.reason == "checkpoint 3 covers 20 entries but only 17 exist (truncated)"


def test_renumbered_seq_column(log20: Path, raw: sqlite3.Connection) -> None:
    raw.execute("UPDATE entries SET seq = 100 WHERE seq = 19")
    assert check(log20).reason == "entry 19: stored under seq 100"


def test_edited_leaf_column(log20: Path, raw: sqlite3.Connection) -> None:
    raw.execute("UPDATE entries SET leaf = zeroblob(32) WHERE seq = 2")
    assert check(log20).reason == "entry 2: stored leaf hash does not match the entry"


def test_wrong_key(log20: Path) -> None:
    report = verify(log20, key=b"\x00" * 32)
    assert not report.ok and report.first_bad_seq is None
    assert report.reason.startswith("wrong mac key for this log (key check mismatch)")


def forge_checkpoint(raw: sqlite3.Connection, signer: Ed25519PrivateKey, size: int,
                     root: bytes) -> None:
    log_id = raw.execute("SELECT value FROM meta WHERE name = 'log_id'").fetchone()[0]
    row = sign_checkpoint(signer, key_id=public_key_id(signer.public_key()), tree_size=size,
                          root=root, ts=0, log_id=log_id)
    raw.execute("INSERT INTO checkpoints (tree_size, body, signature) VALUES (?, ?, ?)", row)


def test_checkpoint_root_must_match_entries(db: Path, raw: sqlite3.Connection) -> None:
    build(db, [event(i) for i in range(20)], every=100)
    forge_checkpoint(raw, SIGNING_KEY, 30, b"\x11" * 32)
    raw.execute("DELETE FROM checkpoints WHERE tree_size = 20")
    raw.execute("UPDATE checkpoints SET tree_size = 20, body = replace(body, '30', '20')")
    assert check(db).reason == "checkpoint 0 (tree size 20): bad signature"  # body was edited
    raw.execute("DELETE FROM checkpoints")
    forge_checkpoint(raw, SIGNING_KEY, 20, b"\x11" * 32)
    report = check(db)
    assert report.reason == "checkpoint 0 (tree size 20): root does not match the entries"
    assert report.first_bad_seq is None and report.entries == 20


def test_bad_checkpoint_signature(log20: Path, raw: sqlite3.Connection) -> None:
    raw.execute("UPDATE checkpoints SET signature = replace(signature, substr(signature, 1, 1), "
                "CASE substr(signature, 1, 1) WHEN 'a' THEN 'b' ELSE 'a' END) WHERE id = 2")
    assert check(log20).reason == "checkpoint 1 (tree size 10): bad signature"


def test_checkpoint_by_an_unknown_or_unpinned_key(log20: Path, raw: sqlite3.Connection) -> None:
    tree = CompactTree()
    for (leaf,) in raw.execute("SELECT leaf FROM entries ORDER BY seq"):
        tree.append(leaf)
    forge_checkpoint(raw, OTHER_KEY, 20, tree.root())
    raw.execute("DELETE FROM checkpoints WHERE id = 4")
    other_id = public_key_id(OTHER_KEY.public_key())
    assert check(log20).reason == f"checkpoint 3 (tree size 20): signed by unknown key {other_id!r}"
    raw.execute("INSERT INTO signers VALUES (?, ?)",
                (other_id, raw_public_key(OTHER_KEY.public_key()).hex()))
    assert check(log20).ok  # registered in the file: only pinning tells the keys apart
    pinned = check(log20, public_key=SIGNING_KEY.public_key())
    assert pinned.reason is not None and "not a pinned key" in pinned.reason


def test_reordered_checkpoints(log20: Path, raw: sqlite3.Connection) -> None:
    raw.execute("UPDATE checkpoints SET id = 0 WHERE id = 3")
    assert check(log20).reason == "checkpoint 1 (tree size 5): does not grow past 15 (reordered)"


def test_streams_across_pages(db: Path, raw: sqlite3.Connection) -> None:
    with AuditLog.open(db, key=MAC_KEY, signing_key=SIGNING_KEY, checkpoint_every=700) as log:
        for i in range(2500):
            log.append(event(i))
    assert check(db).entries == 2500
    assert [e["seq"] for e in read_events(db, since_seq=1998, limit=4)] == [1998, 1999, 2000, 2001]
    raw.execute("DELETE FROM entries WHERE seq = 2100")
    assert check(db).first_bad_seq == 2100


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="no audit log"):
        verify(tmp_path / "nope.db", key=MAC_KEY)


# -- property: a log verifies iff it was not modified ---------------------------------------

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6,
)
bodies = st.lists(
    st.fixed_dictionaries({"kind": st.sampled_from(["decision", "outcome", "approval"]),
                           "id": st.text(min_size=1, max_size=10), "ts": st.integers(0, 2**63 - 1),
                           "data": json_value}),
    min_size=1, max_size=25,
)
MUTATIONS = ["none", "edit_body", "edit_mac", "delete", "delete_renumber", "swap", "insert",
             "truncate"]


def mutate(conn: sqlite3.Connection, kind: str, data: st.DataObject, n: int) -> int | None:
    """Apply one mutation to the stored entries; return the seq verify must name."""

    def pick(lo: int, hi: int) -> int:
        value: int = data.draw(st.integers(lo, hi))
        return value

    rows = conn.execute("SELECT body, mac, leaf FROM entries ORDER BY seq").fetchall()
    if kind == "none":
        return None
    if kind == "edit_body":
        i = pick(0, n - 1)
        body = bytearray(rows[i][0])
        at = pick(0, len(body) - 1)
        body[at] = (body[at] + pick(1, 255)) % 256
        conn.execute("UPDATE entries SET body = ? WHERE seq = ?", (bytes(body), i))
        return i
    if kind == "edit_mac":
        i = pick(0, n - 1)
        mac = list(rows[i][1])
        at = pick(0, 63)
        mac[at] = data.draw(st.sampled_from([c for c in "0123456789abcdef" if c != mac[at]]))
        conn.execute("UPDATE entries SET mac = ? WHERE seq = ?", ("".join(mac), i))
        return i
    if kind == "delete":
        i = pick(0, n - 1)
        conn.execute("DELETE FROM entries WHERE seq = ?", (i,))
        return i
    if kind == "truncate":
        k = pick(1, n)
        conn.execute("DELETE FROM entries WHERE seq >= ?", (n - k,))
        return n - k
    if kind == "delete_renumber":
        i = pick(0, n - 1)
        new_rows, bad = rows[:i] + rows[i + 1:], i
    elif kind == "swap":
        i, j = sorted(data.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2,
                                         unique=True))) if n > 1 else (0, 0)
        if i == j:
            return None
        new_rows = list(rows)
        new_rows[i], new_rows[j] = rows[j], rows[i]
        bad = i
    else:  # insert a copy of row i at position j
        i, j = pick(0, n - 1), pick(0, n)
        new_rows = [*rows[:j], rows[i], *rows[j:]]
        bad = j if j != i else i + 1
    conn.execute("DELETE FROM entries")
    conn.executemany("INSERT INTO entries (seq, body, mac, leaf) VALUES (?, ?, ?, ?)",
                     [(seq, *row) for seq, row in enumerate(new_rows)])
    return bad


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=bodies, every=st.integers(1, 8), kind=st.sampled_from(MUTATIONS), data=st.data())
def test_a_log_verifies_iff_it_was_not_modified(
    events: list[dict[str, Any]], every: int, kind: str, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "p.db"
        build(db, events, every=every)
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            bad = mutate(conn, kind, data, len(events))
        finally:
            conn.close()
        report = verify(db, key=MAC_KEY, public_key=SIGNING_KEY.public_key())
    if bad is None:
        assert report.ok and report.entries == len(events), report
    else:
        assert not report.ok, (kind, report)
        assert report.first_bad_seq == bad, (kind, report)
        assert report.entries == bad
        assert f"entry {bad}:" in str(report.reason) or "truncated" in str(report.reason)


def test_missing_key_file_is_an_error(log20: Path) -> None:
    with pytest.raises(AuditError, match="mac key file not found"):
        verify(log20)
    with pytest.raises(AuditError, match="mac key file not found"):
        verify(log20, key_path=str(log20) + ".other")


def test_read_events_names_an_unreadable_entry(log20: Path, raw: sqlite3.Connection) -> None:
    raw.execute("UPDATE entries SET body = 'not json' WHERE seq = 3")
    events = read_events(log20)
    assert [next(events)["seq"] for _ in range(3)] == [0, 1, 2]
    with pytest.raises(AuditError, match="entry 3: unreadable body"):
        next(events)
