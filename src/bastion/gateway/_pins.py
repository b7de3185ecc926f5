"""Tool pins: the definition of every upstream tool a human (or first use) trusted, by hash.

A pin lives in the gateway's state file (its own table, ``mcp_tool_pins``, beside the kernel's
state), so it survives restarts and is shared by every gateway process on that file. A tool is
shown and callable only while the digest of what its server serves now equals its trusted
digest. The rules, applied by ``observe`` each time the gateway lists an upstream's tools:

1. Same definition as the trusted one → ``ok``.
2. A trusted definition exists and this one differs (a *rug pull*) → ``changed``: hidden and
   refused until approved again; the trusted digest is kept, so serving the old definition
   again restores the tool.
3. Nothing trusted yet and the scan flagged it (poisoning, typosquat) → ``flagged``.
4. Nothing trusted yet, clean, and the gateway trusts on first use (``auto_pin``) → pinned,
   ``ok``; without ``auto_pin`` → ``pending``.

``approve`` trusts the definition last seen (which ``get`` shows for review), whatever the
scan said: a human has read it. A later change needs a new approval.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from bastion._canon import digest
from bastion._errors import StateError
from bastion._sqlite import connect, sqlite_path, transaction

_SCHEMA = """
create table if not exists mcp_tool_pins (name text primary key, upstream text not null,
    tool text not null, trusted text not null, trust text not null, status text not null,
    seen text not null, definition text not null, reasons text not null, decided_by text,
    updated real not null);
"""

#: what of a tool is pinned: everything a model or a client is shown about it
PINNED_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


def definition_digest(definition: dict[str, Any]) -> str:
    """``sha256:`` of the canonical JSON of a tool's pinned fields (wire names)."""
    return digest({k: definition.get(k) for k in PINNED_FIELDS})


@dataclass(frozen=True, slots=True)
class Pin:
    """One tool's pin. ``trusted`` is the digest shown and callable (``""``: none);
    ``trust`` says who trusted it (``auto``, ``approved`` or ``""``); ``status`` the verdict
    of the last observation (``ok``, ``changed``, ``flagged``, ``pending``)."""

    name: str
    upstream: str
    tool: str
    trusted: str
    trust: str
    status: str
    seen: str
    definition: dict[str, Any]
    reasons: tuple[str, ...]
    decided_by: str
    updated: float

    @property
    def visible(self) -> bool:
        return bool(self.trusted) and self.trusted == self.seen


class PinStore:
    """Pins in a SQLite file (``None``/``memory://``: in this process only). Thread-safe."""

    def __init__(self, target: str | os.PathLike[str] | None):
        self.path = sqlite_path(target, "state")
        try:
            self._db = connect(self.path, _SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"{self.path!r}: cannot open the pin store: {exc}") from exc
        self._lock = threading.RLock()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock, lambda exc: StateError(
            f"{self.path!r}: pin store failed: {exc}"))

    def get(self, name: str) -> Pin | None:
        with self._lock:
            row = self._db.execute("select * from mcp_tool_pins where name=?",
                                   (name,)).fetchone()
        return _pin(row) if row else None

    def all(self) -> list[Pin]:
        with self._lock:
            rows = self._db.execute("select * from mcp_tool_pins order by name").fetchall()
        return [_pin(r) for r in rows]

    def observe(self, name: str, upstream: str, tool: str, definition: dict[str, Any],
                findings: list[str], *, auto_pin: bool, now: float) -> tuple[Pin, bool]:
        """Record what ``upstream`` serves as ``name`` now and decide (module docstring);
        returns the pin and whether its status or definition changed."""
        seen = definition_digest(definition)
        with self._tx() as db:
            row = db.execute("select * from mcp_tool_pins where name=?", (name,)).fetchone()
            old = _pin(row) if row else None
            trusted, trust = (old.trusted, old.trust) if old else ("", "")
            reasons: list[str] = []
            if trusted and trusted == seen:
                status = "ok"
            elif trusted:
                status = "changed"
                reasons.append(f"its definition changed since it was {_verb(trust)} "
                               f"({trusted[:19]} -> {seen[:19]})")
                reasons.extend(findings)
            elif findings:
                status, reasons = "flagged", list(findings)
            elif auto_pin:
                status, trusted, trust = "ok", seen, "auto"
            else:
                status = "pending"
                reasons.append("it has not been approved yet")
            pin = Pin(name, upstream, tool, trusted, trust, status, seen, definition,
                      tuple(reasons), old.decided_by if old else "", now)
            moved = old is None or (old.status, old.seen, old.trusted) != (status, seen, trusted)
            if moved or old is None or old.reasons != pin.reasons:
                _put(db, pin)
        return pin, moved

    def approve(self, name: str, by: str, now: float, digest: str | None = None) -> Pin:
        """Trust the definition of ``name`` last seen; ``StateError`` when it was never seen,
        and when ``digest`` (what the approver reviewed, ``tools --full``'s ``seen``) is not
        the definition last seen: an upstream that swapped it since gets no approval."""
        if not isinstance(by, str) or not by.strip():
            raise StateError("approving a tool needs the approver's identity ('by')")
        with self._tx() as db:
            row = db.execute("select * from mcp_tool_pins where name=?", (name,)).fetchone()
            if row is None:
                raise StateError(f"no tool {name!r} has been seen by the gateway")
            old = _pin(row)
            if digest is not None and digest != old.seen:
                raise StateError(f"tool {name!r} changed since it was reviewed (reviewed "
                                 f"{digest[:19]}, now {old.seen[:19]}): review it again")
            pin = Pin(old.name, old.upstream, old.tool, old.seen, "approved", "ok", old.seen,
                      old.definition, (), by, now)
            _put(db, pin)
        return pin

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _verb(trust: str) -> str:
    return "approved" if trust == "approved" else "pinned"


def _put(db: sqlite3.Connection, p: Pin) -> None:
    db.execute("insert or replace into mcp_tool_pins values(?,?,?,?,?,?,?,?,?,?,?)",
               (p.name, p.upstream, p.tool, p.trusted, p.trust, p.status, p.seen,
                json.dumps(p.definition, sort_keys=True), json.dumps(list(p.reasons)),
                p.decided_by, p.updated))


def _pin(row: Any) -> Pin:
    (name, upstream, tool, trusted, trust, status, seen, definition, reasons, by,
     updated) = row
    return Pin(name, upstream, tool, trusted, trust, status, seen, json.loads(definition),
               tuple(json.loads(reasons)), by or "", updated)
