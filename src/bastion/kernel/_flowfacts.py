"""Flow facts shared through the state store: how a kernel knows it has seen all of a session.

Provenance lives in each process, but every fact a tracker records is also counted in the
kernel's state store (``flow:n:SESSION``, and ``flow:l:SESSION:LABEL`` for each session-level
label the first time this process records it). A process that finds more facts counted for a
session than it recorded itself (another process shares the store, this one restarted, or it
evicted the session) has not seen all of the session: it fails closed by giving the session the
labels ``untrusted`` and ``incomplete`` and every counted label. An in-process store
(``:memory:``) cannot be shared between processes, so its counts are kept in this process, per
store object (every tracker given that store shares them), without a store read per decision;
they outlive an evicted session's provenance, so eviction still fails closed. A fact is claimed
as this process's only after its count is written, so a failed write never hides another
process's fact. An ended session is a tombstone in the store: every tracker then reads it as
``ended`` and forgets what it held of it.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from bastion.flow import Provenance

FOREVER = 1 << 40  # a counter window no session outlives
INCOMPLETE = "incomplete"  # session label: facts were recorded that this process has not seen
ENDED = "ended"  # session label: the session was ended (Kernel.end_session); its id is spent
ENDED_COUNT = 1 << 40  # what an end adds to the session's fact count: more than anyone recorded
# the counts of each in-process store, shared by every tracker given that store object
_LOCAL_COUNTS: weakref.WeakKeyDictionary[Any, dict[str, tuple[int, frozenset[str]]]] = \
    weakref.WeakKeyDictionary()
_LOCAL_LOCK = threading.Lock()  # guards every tracker's use of _LOCAL_COUNTS


class SharedFacts:
    """The counting half of a ``FlowTracker``: what it recorded of each session against what
    the state store counted. The tracker supplies ``_flows`` (session -> provenance),
    ``_labels`` (every session-level label a fact can carry) and ``_forget``."""

    _flows: Any
    _labels: list[str]

    def __init__(self, state: Any, clock: Callable[[], float]):
        self._state = state
        self._clock = clock
        self._lock = threading.RLock()
        self._recorded: dict[str, int] = {}  # session -> facts this process recorded
        self._counted: dict[str, set[str]] = {}  # session -> labels this process counted
        # an in-process store (":memory:") is nobody else's: its counts are kept here, so only
        # eviction can make them differ from what this tracker recorded
        self._local: dict[str, tuple[int, frozenset[str]]] | None = None
        if getattr(state, "path", None) == ":memory:":
            try:  # every tracker given this store object shares its counts
                with _LOCAL_LOCK:
                    self._local = _LOCAL_COUNTS.setdefault(state, {})
            except TypeError:  # a store that cannot be weakly referenced: count in it
                self._local = None

    def _forget(self, session_id: str) -> None:
        raise NotImplementedError

    def _missing(self, session_id: str) -> set[str] | None:
        """``None`` when this process has seen every counted fact of the session; else the
        labels counted for it (the store's, read with one query where the store can)."""
        if self._state is None:
            return None
        if self._local is not None:  # read together: a fact is counted and claimed at once
            with self._lock, _LOCAL_LOCK:
                mine = self._recorded.get(session_id, 0)
                total, counted = self._local.get(session_id, (0, frozenset()))
            if total <= mine:
                return None
            if total < ENDED_COUNT:
                return set(counted)
            self._forget(session_id)
            return {ENDED}
        with self._lock:
            mine = self._recorded.get(session_id, 0)
        now = self._clock()
        total = self._state.count(f"flow:n:{session_id}", FOREVER, now)
        if total <= mine:
            return None
        if total < ENDED_COUNT:
            prefix = f"flow:l:{session_id}:"
            many = getattr(self._state, "counts", None)
            if many is not None:
                found = {k[len(prefix):] for k, n in many(prefix, FOREVER, now).items() if n > 0}
                labels = {x for x in found if ":" not in x}  # not session "ID:more"'s labels
            else:
                labels = {x for x in self._labels
                          if self._state.count(f"{prefix}{x}", FOREVER, now) > 0}
            # an end between the two reads deletes the labels: read the count again
            if self._state.count(f"flow:n:{session_id}", FOREVER, now) < ENDED_COUNT:
                return labels
        self._forget(session_id)  # ended: its labels may be gone, and the kernel denies it
        return {ENDED}

    def tombstone(self, session_id: str) -> None:
        """Leave an end in the state store: the session's fact count raised past anything
        recorded, its label counters deleted where the store can. Any tracker on the store then
        reads the session as ``ended`` and denies what it would decide from its labels, so a
        worker that still holds part of the session cannot carry on with it."""
        if self._state is None:
            return
        if self._local is not None:
            with _LOCAL_LOCK:
                total, _ = self._local.get(session_id, (0, frozenset()))
                self._local[session_id] = (total + ENDED_COUNT, frozenset())
        else:
            now = self._clock()
            self._state.add(f"flow:n:{session_id}", ENDED_COUNT, FOREVER, now)
            delete, many = (getattr(self._state, "delete", None),
                            getattr(self._state, "counts", None))
            if delete is not None and many is not None:
                prefix = f"flow:l:{session_id}:"  # not session "ID:more"'s labels
                delete([k for k in many(prefix, FOREVER, now) if ":" not in k[len(prefix):]])

    def _counted_fact(self, session_id: str, prov: Provenance,
                      labels: Iterable[str] = ()) -> None:
        """Count a fact ``prov`` recorded, then claim it as this process's: a count that fails
        (or has not happened yet) must never let this process claim more than it counted."""
        with self._lock:
            new = set(labels) - self._counted.get(session_id, set())
        self._count(session_id, new)
        with self._lock:
            if self._flows.get(session_id) is prov:  # not evicted meanwhile
                self._claim(session_id, new)

    @property
    def shares_store(self) -> bool:
        """Flow facts are counted in a store that does I/O (not kept in this process)."""
        return self._state is not None and self._local is None

    def _span(self) -> AbstractContextManager[Any]:
        """Where counting costs no I/O (an in-process store), a fact is counted, recorded and
        claimed under the lock, so a concurrent decision of the same session never sees it
        counted but not yet claimed (a false ``incomplete``). A shared store's count is I/O and
        is not held under the lock: there the gap remains, on the safe side."""
        return self._lock if self._local is not None else contextlib.nullcontext()

    def _claim(self, session_id: str, labels: Iterable[str]) -> None:
        """This process saw one more counted fact of the session (call with the lock held)."""
        self._recorded[session_id] = self._recorded.get(session_id, 0) + 1
        self._counted.setdefault(session_id, set()).update(labels)

    def _count(self, session_id: str, new_labels: Iterable[str]) -> None:
        """Count one recorded fact (and labels new to this process) in the state store."""
        if self._state is None:
            return
        if self._local is not None:
            with _LOCAL_LOCK:
                total, counted = self._local.get(session_id, (0, frozenset()))
                self._local[session_id] = (total + 1, counted | frozenset(new_labels))
            return
        now = self._clock()
        for label in new_labels:
            self._state.add(f"flow:l:{session_id}:{label}", 1, FOREVER, now)
        self._state.add(f"flow:n:{session_id}", 1, FOREVER, now)
