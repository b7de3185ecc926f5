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
import inspect
import threading
import weakref
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from bastion._canon import LazyModule, jsonable
from bastion.flow import Provenance
from bastion.flow._results import Quarantine

if TYPE_CHECKING:
    import orjson
else:
    orjson = LazyModule("orjson", globals())

FOREVER = 1 << 40  # a counter window no session outlives
INCOMPLETE = "incomplete"  # session label: facts were recorded that this process has not seen
ENDED = "ended"  # session label: the session was ended (Kernel.end_session); its id is spent
_MAX_WAITING = 64  # calls of one tool whose results are still to carry their arguments' labels
MAX_FACT_BYTES = 8 << 20  # a fact's body kept for replay (a larger one is kept without its data)
ENDED_COUNT = 1 << 40  # what an end adds to the session's fact count: more than anyone recorded
# the counts of each in-process store, shared by every tracker given that store object
_LOCAL_COUNTS: weakref.WeakKeyDictionary[Any, dict[str, tuple[int, frozenset[str]]]] = \
    weakref.WeakKeyDictionary()
_LOCAL_LOCK = threading.Lock()  # guards every tracker's use of _LOCAL_COUNTS


class _Seen:
    """The numbers (1, 2, …) of one session's facts this process holds: every one up to
    ``upto``, and the later ones in ``later``."""

    __slots__ = ("later", "upto")

    def __init__(self, upto: int = 0) -> None:
        self.upto = upto
        self.later: set[int] = set()

    def add(self, seq: int) -> None:
        if seq == self.upto + 1 and not self.later:  # the usual case: the next one
            self.upto = seq
        elif seq > self.upto:
            self.later.add(seq)
            while self.upto + 1 in self.later:
                self.upto += 1
                self.later.discard(self.upto)

    def __contains__(self, seq: object) -> bool:
        return isinstance(seq, int) and (1 <= seq <= self.upto or seq in self.later)

    def __len__(self) -> int:
        return self.upto + len(self.later)

    @property
    def last(self) -> int:
        return max(self.later) if self.later else self.upto


class SharedFacts:
    """The counting half of a ``FlowTracker``: what it recorded of each session against what
    the state store counted. The tracker supplies ``_flows`` (session -> provenance),
    ``_labels`` (every session-level label a fact can carry) and ``_forget``."""

    _flows: Any
    _vaults: dict[str, Quarantine]
    _tainted_calls: dict[str, dict[str, list[frozenset[str]]]]
    _labels: list[str]

    def __init__(self, state: Any, clock: Callable[[], float], *, share: bool = False):
        self._state = state
        self._clock = clock
        self._lock = threading.RLock()
        self._recorded: dict[str, int] = {}  # session -> facts this process holds
        self._seen: dict[str, _Seen] = {}  # session -> which facts (by number) it holds
        self._pending: dict[str, int] = {}  # session -> own results recorded, not yet claimed
        # sharing provenance (Kernel(share_flow=True)) on a store that keeps each fact's body
        # (add_fact): a process that has not seen a fact replays it from there (_catch_up)
        # instead of failing closed
        self._logs = share and state is not None and callable(getattr(state, "add_fact", None))
        # a store of bastion's takes no fact once a session ended, atomically; another's (an
        # older signature) is asked first, which leaves a narrow gap
        self._ceiling = self._logs and "ceiling" in inspect.signature(state.add_fact).parameters
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

    def _provenance(self, session_id: str) -> Provenance:
        raise NotImplementedError

    def _vault(self, session_id: str) -> Quarantine:
        raise NotImplementedError

    def _fact(self, fact: dict[str, Any]) -> dict[str, Any] | None:
        """``fact`` as JSON data for a store that keeps facts (``None`` where none is kept)."""
        if not self._logs or self._local is not None:
            return None
        return {k: jsonable(v) if k in ("v", "raw") else v for k, v in fact.items()}

    def _install(self, session_id: str, facts: list[dict[str, Any]], fresh: bool) -> None:
        """Apply ``facts`` (in order) to the session: onto what this process holds, or, when
        ``fresh``, onto an empty session that replaces it (call with the lock held)."""
        if fresh:  # replaces what this process held: an in-flight record into it goes unclaimed
            self._flows.pop(session_id, None)
            self._vaults.pop(session_id, None)
            self._tainted_calls.pop(session_id, None)
        prov = self._provenance(session_id)
        calls = self._tainted_calls.setdefault(session_id, {})
        for fact in facts:
            if not _well_formed(fact):  # a foreign or corrupt body: what it held is not placed
                prov.record_unplaced(["untrusted", INCOMPLETE])
                continue
            kind, tool = fact.get("k"), str(fact.get("tool", ""))
            if kind == "input":
                prov.record_input(fact.get("v"))
            elif kind == "call":
                prov.record_call(tool)
                carried = frozenset(str(x) for x in fact.get("carried") or ())
                if carried:
                    _wait(calls, tool, carried)
            elif kind == "result":
                labels = [str(x) for x in fact.get("labels") or ("untrusted",)]
                waiting = calls.get(tool)
                if waiting:
                    waiting.pop(0)  # as the recording process did
                if fact.get("cut"):  # too large to keep: what it held is not placed
                    prov.record_unplaced(labels)
                    continue
                prov.record(fact.get("v"), labels, [str(k) for k in fact.get("keys") or ()])
                handle = fact.get("handle")
                if isinstance(handle, str):
                    self._vault(session_id).hold(fact.get("raw"), f"tool:{tool}", labels, handle)
                    prov.record(handle, labels)
            elif kind == "unsure":  # a call another worker counted was denied after all
                prov.labels.add(INCOMPLETE)


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
        if total < ENDED_COUNT and self._logs and self._catch_up(session_id, total):
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

    @contextlib.contextmanager
    def _recording(self, session_id: str) -> Any:
        """Around recording a result and claiming it: a replay meanwhile would apply it a
        second time (it is counted before it is claimed), so none runs until it is claimed."""
        with self._lock:
            self._pending[session_id] = self._pending.get(session_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._pending.pop(session_id, 1) - 1
                if left > 0:
                    self._pending[session_id] = left

    def _catch_up(self, session_id: str, total: int) -> bool:
        """Replay the facts other processes recorded (``total`` counted): the missing ones onto
        what this process holds when they all came after its own, else every fact onto an empty
        session. ``False`` (the caller fails closed) when a fact's body is not there yet, cannot
        be read, or this process recorded a fact meanwhile."""
        with self._lock:
            if self._pending.get(session_id):
                return False  # an own result is between its count and its claim: not now
            before = self._recorded.get(session_id, 0)
            seen = self._seen.get(session_id)
            prov = self._flows.get(session_id)
            since = seen.last if seen is not None and len(seen) == seen.last else 0
        bodies = self._state.facts(session_id, total, since)
        if len(bodies) != total - since:
            return False
        try:
            facts = [orjson.loads(bodies[n]) for n in range(since + 1, total + 1)]
        except (orjson.JSONDecodeError, KeyError):
            return False
        with self._lock:
            # the same objects, not just the same counts: an eviction and a new claim would
            # bring the count back while what this process held is gone
            if self._recorded.get(session_id, 0) != before or self._pending.get(session_id) \
                    or self._seen.get(session_id) is not seen or \
                    self._flows.get(session_id) is not prov:
                return False  # recorded here meanwhile: try again at the next decision
            self._install(session_id, facts, fresh=since == 0)
            self._seen[session_id] = _Seen(total)
            self._recorded[session_id] = total
            self._counted.setdefault(session_id, set()).update(
                x for f in facts if _well_formed(f) and f["k"] == "result"
                for x in f["labels"] if x != "trusted" and ":" not in x)
        return True

    def _holds(self, session_id: str, seq: int | None) -> bool:
        """This process already holds fact ``seq`` (replayed before its own recording got
        there): it must not be recorded twice (call with the lock held)."""
        seen = self._seen.get(session_id)
        return seq is not None and seen is not None and seq in seen

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
            drop = getattr(self._state, "delete_facts", None)
            if callable(drop):  # whoever wrote them
                drop(session_id)

    def _counted_fact(self, session_id: str, prov: Provenance,
                      labels: Iterable[str] = (), fact: dict[str, Any] | None = None) -> None:
        """Count a fact ``prov`` recorded, then claim it as this process's: a count that fails
        (or has not happened yet) must never let this process claim more than it counted."""
        with self._lock:
            new = set(labels) - self._counted.get(session_id, set())
        seq = self._count(session_id, new, fact)
        with self._lock:
            if self._flows.get(session_id) is prov:  # not evicted or replaced meanwhile
                self._claim(session_id, new, seq)

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

    def _claim(self, session_id: str, labels: Iterable[str], seq: int | None) -> None:
        """This process holds counted fact ``seq`` of the session (call with the lock held)."""
        if seq is None:  # no store: nothing to compare with
            self._recorded[session_id] = self._recorded.get(session_id, 0) + 1
        else:
            seen = self._seen.get(session_id)
            if seen is None:
                seen = self._seen[session_id] = _Seen()
            seen.add(seq)
            self._recorded[session_id] = len(seen)
        self._counted.setdefault(session_id, set()).update(labels)

    def _count(self, session_id: str, new_labels: Iterable[str],
               fact: dict[str, Any] | None = None) -> int | None:
        """Count one recorded fact (and labels new to this process) in the state store; its
        number. Where the store keeps facts, ``fact`` (JSON data) is kept with its number."""
        if self._state is None:
            return None
        if self._local is not None:
            with _LOCAL_LOCK:
                total, counted = self._local.get(session_id, (0, frozenset()))
                self._local[session_id] = (total + 1, counted | frozenset(new_labels))
            return total + 1
        now = self._clock()
        if self._logs and not self._ceiling and self._state.count(
                f"flow:n:{session_id}", FOREVER, now) >= ENDED_COUNT:
            return None  # ended: what arrives late (a call in flight) is not kept in the store
        if fact is not None and self._logs:
            body = orjson.dumps(fact)
            if len(body) > MAX_FACT_BYTES:  # kept without its data: a replay unplaces its labels
                body = orjson.dumps({**{k: v for k, v in fact.items() if k not in ("v", "raw")},
                                     "cut": True})
            extra = {"ceiling": ENDED_COUNT} if self._ceiling else {}  # refused once ended
            seq = int(self._state.add_fact(f"flow:n:{session_id}", FOREVER, now, session_id,
                                           body, **extra))
            if seq >= ENDED_COUNT:
                return None
        else:
            seq = int(self._state.add(f"flow:n:{session_id}", 1, FOREVER, now))
        added = [f"flow:l:{session_id}:{label}" for label in new_labels]
        for key in added:  # counted after the fact: none are left for an ended session
            self._state.add(key, 1, FOREVER, now)
        if added and self._state.count(f"flow:n:{session_id}", FOREVER, now) >= ENDED_COUNT:
            delete = getattr(self._state, "delete", None)  # ended meanwhile: taken back
            if callable(delete):
                delete(added)
        return seq


def _wait(calls: dict[str, list[frozenset[str]]], tool: str, carried: frozenset[str]) -> None:
    """One more call of ``tool`` whose result is to carry ``carried`` (bounded: past
    ``_MAX_WAITING``, later results of the tool carry more, never less)."""
    waiting = calls.setdefault(tool, [])
    if len(waiting) < _MAX_WAITING:
        waiting.append(carried)
    else:
        waiting[-1] |= carried


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _well_formed(fact: Any) -> bool:
    """A fact as this version writes them (kind, and each field of the type it must have)."""
    if not isinstance(fact, dict):
        return False
    kind = fact.get("k")
    if kind in ("input", "unsure"):
        return True
    if not isinstance(fact.get("tool"), str):
        return False
    if kind == "call":
        return _strings(fact.get("carried", []))
    return kind == "result" and _strings(fact.get("labels")) and bool(fact["labels"]) and \
        _strings(fact.get("keys", [])) and isinstance(fact.get("handle"), str | None)
