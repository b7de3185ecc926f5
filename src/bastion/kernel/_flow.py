"""The kernel's information-flow state: per session, the provenance of what passed through it
and the quarantined results, and the flow facts it records at each stage (DESIGN.md "Flow
facts"). Thread-safe: one lock guards every session.

Bounded: at most ``MAX_FLOW_SESSIONS`` sessions (least recently used out, counted in
``evicted``); a session's quarantine vault goes with its provenance, so a handle never outlives
the labels of what it hides.

Provenance lives in this process; ``SharedFacts`` (``_flowfacts``) counts every fact in the state
store, so a process that has not seen all of a session fails closed, and an ended session is a
tombstone every tracker reads. Allowed calls are facts too (counted whatever this kernel's own
policy reads).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bastion._canon import canonical_tool
from bastion.flow import Provenance, ToolCatalog, ToolInfo
from bastion.flow._results import (
    INJECTION,
    Quarantine,
    _new_handle,
    as_text,
    has_handle,
    injection_signal,
    mark,
)
from bastion.kernel._flowfacts import ENDED, INCOMPLETE, SharedFacts, _wait
from bastion.kernel._flowrules import literals, reads_history
from bastion.kernel._types import EMPTY, Action, Decision

MAX_FLOW_SESSIONS = 10_000  # sessions whose provenance is kept in memory (least recent out)
_COMPLETE: Any = frozenset({"<complete>"})  # sync found nothing missing (not None: "not asked")
SESSION_ENDED = ("the session was ended (Kernel.end_session): its flow facts are forgotten, so "
                 "nothing in it can be decided; start a new session id")
HISTORY_UNKNOWN = ("a rule reads session.history, but this kernel has not seen every flow fact of "
                   "the session (another process, a restart or eviction): its history is not "
                   "known")


class FlowTracker(SharedFacts):
    """Provenance and quarantine per session, for one kernel and its tool catalog."""

    def __init__(self, catalog: ToolCatalog, state: Any = None,
                 clock: Callable[[], float] = time.time, *, labels: Iterable[str] = (),
                 share: bool = False):
        self.catalog = catalog
        self._flows: OrderedDict[str, Provenance] = OrderedDict()
        self._vaults: dict[str, Quarantine] = {}
        SharedFacts.__init__(self, state, clock, share=share)
        self.history_rules: frozenset[str] = frozenset()  # ids of rules reading the history
        # session -> trusted tool -> allowed calls in flight that took untrusted or unknown
        # arguments: what such a call returns may be those arguments echoed back, so a result of
        # that tool is untrusted while any is in flight (a clean call clears none of them)
        self._tainted_calls: dict[str, dict[str, list[frozenset[str]]]] = {}
        self._recent = threading.local()  # the arguments' labels this thread just computed
        # every session-level label a fact can carry (this catalog's, and any the policy names:
        # another worker's catalog may label what this one does not)
        self._labels = sorted({"untrusted", INJECTION, *labels} | {
            x for info in catalog.tools.values()
            for x in (info.integrity, info.confidentiality) if x != "trusted"})
        self.evicted = 0

    @classmethod
    def for_rules(cls, catalog: ToolCatalog, rules: Iterable[Any], state: Any,
                  clock: Callable[[], float], *, share: bool = False) -> FlowTracker:
        """The tracker for a compiled policy's rules: it knows which rules read
        ``session.history`` (Cedar's context has none), and reads back the labels the rules
        name as well as the catalog's."""
        rules = tuple(rules)
        history = frozenset(cr.rule.id for cr in rules if reads_history(cr))
        tracker = cls(catalog, state, clock, labels=literals(cr.program for cr in rules),
                      share=share)
        tracker.history_rules = history
        return tracker

    def ended(self, session_id: str, data: Mapping[str, Any]) -> bool:
        """The decision reads the session's flow facts (its labels or its arguments' labels),
        and the session was ended."""
        session = data.get("session")
        if isinstance(session, dict):
            return ENDED in session.get("labels", ())
        if "arg_labels" in data:
            return ENDED in (self._missing(session_id) or ())
        return False

    def history_unknown(self, data: Mapping[str, Any], cands: Any) -> bool:
        """A rule that could decide this action reads ``session.history``, but the session is
        ``incomplete``: calls another process allowed are missing from it, so no answer from it
        can be trusted."""
        session = data.get("session")
        return (bool(self.history_rules) and isinstance(session, dict)
                and INCOMPLETE in session.get("labels", ())
                and any(cr.rule.id in self.history_rules for t in cands.tiers
                        for cr in (*t.unconditional, *t.conditional)))

    # -- what policies see ----------------------------------------------------------------------
    def sync(self, session_id: str) -> set[str] | None:
        """Before a decision reads the session: where provenance is shared, replay what other
        processes recorded (``_catch_up``); what ``_missing`` says is still missing."""
        self._recent.synced = session_id  # this decision has synced (``_observe`` reads it)
        return self._missing(session_id)

    @property
    def shares_facts(self) -> bool:
        """Facts are replayed from the state store (``Kernel(share_flow=True)``)."""
        return self._logs

    def session_facts(self, session_id: str, *, history: bool = True,
                      missing: Any = None) -> tuple[list[str], list[str]]:
        """The session's labels and (with ``history``) its history of allowed calls; with
        ``incomplete`` (and the labels counted in the state store) when facts were recorded
        that this process has not seen. ``missing``: what ``sync`` just said, when it was
        called for this decision (the session is then read after the replay)."""
        if self._logs:
            counted = self.sync(session_id) if missing is None else missing
        with self._lock:
            prov = self._provenance(session_id)
            labels = prov.session_labels()
            calls = prov.full_history() if history else []
        if not self._logs:
            counted = self._missing(session_id)
        if counted is None or counted is _COMPLETE:
            return labels, calls
        return sorted(set(labels) | counted | {"untrusted", INCOMPLETE}), calls

    def end(self, session_id: str) -> None:
        """End a session: forget its provenance and quarantine here, after leaving a tombstone
        in the state store (``SharedFacts.tombstone``): any kernel on the store, this one
        included, then reads the session as ``ended``. The tombstone is written before anything
        is forgotten, so a decision racing the end reads either the whole session or its
        end."""
        self.tombstone(session_id)
        self._forget(session_id)

    def _forget(self, session_id: str) -> None:
        """Drop what this tracker holds of a session (its provenance, vault and claims)."""
        with self._lock:
            self._flows.pop(session_id, None)
            self._vaults.pop(session_id, None)
            self._recorded.pop(session_id, None)
            self._seen.pop(session_id, None)
            self._counted.pop(session_id, None)
            self._tainted_calls.pop(session_id, None)

    def unsure(self, session_id: str) -> None:
        """A call this tracker put in the session's history was denied after all (its audit
        event could not be written): the history now holds a call that never ran, so the session
        is ``incomplete`` and no rule over its history is answered from now on."""
        with self._lock:
            self._provenance(session_id).labels.add(INCOMPLETE)
        if self._logs:  # other workers (and this one, after a replay) must learn it too
            seq = self._count(session_id, (), {"k": "unsure"})
            with self._lock:
                self._claim(session_id, (), seq)

    def arg_labels(self, session_id: str, args: Any) -> dict[str, list[str]]:
        """Each argument's labels, including those of the quarantined values its handles stand
        for (kept with the handle, whatever provenance still remembers)."""
        labels = self._arg_labels(session_id, args)
        self._recent.v = (session_id, args, labels)
        return labels

    def _arg_labels(self, session_id: str, args: Any) -> dict[str, list[str]]:
        if not isinstance(args, Mapping):
            return {}
        with self._lock:
            prov = self._provenance(session_id)
            labels = prov.labels_of_args(args)
            vault = self._vaults.get(session_id)
            if vault is not None:
                for name, value in args.items():
                    held = vault.labels_in(value)
                    if held:
                        # and what the content itself reads as once released (an address the
                        # user did not type in it is as untrusted behind a handle as in the open)
                        content = prov.labels_of_args({name: vault.contents_in(value)})
                        merged = set(labels.get(name, ())) | held | set(content.get(name, ()))
                        if "untrusted" in merged:  # a handle is never the user's pick
                            merged -= {"trusted", "unknown", "selected"}
                        labels[name] = sorted(merged)
        if any("selected" in v for v in labels.values()) and \
                self._missing(session_id) is not None:
            # another process may hold a record that makes the key ambiguous: no pick here
            labels = {k: [x for x in v if x != "selected"] for k, v in labels.items()}
        return labels

    def provenance(self, session_id: str) -> Provenance:
        with self._lock:
            return self._provenance(session_id)

    # -- what the kernel records ----------------------------------------------------------------
    def observe(self, action: Action, decision: Decision) -> Decision:
        """Record flow facts: allowed ``input`` text is trusted; every ``post_tool`` result is
        recorded with its catalog labels (plus ``injection`` when it reads like one), whatever
        the decision (more taint is the safe side), and an allowed result is marked or
        quarantined as the catalog says; an allowed ``pre_tool`` call joins the history, with
        any quarantine handles in its arguments released (an unknown handle denies)."""
        try:
            return self._observe(action, decision)
        finally:  # what was computed for this decision only
            self._recent.v = self._recent.synced = None

    def _observe(self, action: Action, decision: Decision) -> Decision:
        stage = action.stage
        if self._logs and stage in ("post_tool", "pre_tool") and decision.session is not None \
                and getattr(self._recent, "synced", None) != decision.session:
            self.sync(decision.session)  # a static verdict read nothing: replay before acting
        if stage == "input":
            if decision.allowed:  # counted first: an input whose count fails is not recorded
                with self._span():
                    seq = self._count(decision.session, (), self._fact(
                        {"k": "input", "v": action.args}))
                    with self._lock:
                        if not self._holds(decision.session, seq):  # not replayed already
                            self._provenance(decision.session).record_input(action.args)
                            self._claim(decision.session, (), seq)
        elif stage == "post_tool":
            return self.observe_result(action, decision)
        elif stage == "pre_tool" and decision.allowed:
            held = decision.args is not None and has_handle(decision.args)
            if held and ENDED in (self._missing(decision.session) or ()):
                return decision._replace(effect="deny", code="session_ended", args=None,
                                         errors=(*decision.errors, SESSION_ENDED))
            carried = self._carried(decision.session, decision.tool, decision.args)
            with self._lock:
                if held:
                    args, used, missing = self._vault(decision.session).release(decision.args)
                    if missing:
                        return decision._replace(
                            effect="deny", code="quarantine", args=None, reasons=(
                                *decision.reasons, "unknown quarantine handle(s) in the "
                                f"arguments: {', '.join(sorted(set(missing)))}"))
                    decision = decision._replace(args=args, reasons=(
                        *decision.reasons, f"flow: released {', '.join(used)}"))
            # counted whatever this kernel's own policy reads: another worker's policy may read
            # session.history (a rollout). Counted first, so a call whose count fails (and is
            # denied) never joins the history
            with self._span():
                seq = self._count(decision.session, (), self._fact(
                    {"k": "call", "tool": decision.tool, "carried": sorted(carried)}))
                with self._lock:
                    if not self._holds(decision.session, seq):
                        self._provenance(decision.session).record_call(decision.tool)
                        if carried:  # what its result is to carry (see _carried)
                            _wait(self._tainted_calls.setdefault(decision.session, {}),
                                  decision.tool, carried)
                        self._claim(decision.session, (), seq)
        return decision

    def _labels_once(self, session_id: str, args: Any) -> dict[str, list[str]]:
        """``arg_labels``, reusing what this thread's decision just computed for ``args``."""
        recent = getattr(self._recent, "v", None)
        if recent is not None and recent[0] == session_id and recent[1] is args:
            return recent[2]  # type: ignore[no-any-return]
        return self.arg_labels(session_id, args)

    def _tainting(self, session_id: str, args: Any,
                  labels: dict[str, list[str]] | None = None) -> bool:
        """``args`` hold a value from untrusted data, or one of unknown source in a session that
        has read untrusted data."""
        if not isinstance(args, Mapping) or not args:
            return False
        if labels is None:
            labels = self._labels_once(session_id, args)
        with self._lock:
            untrusted_session = "untrusted" in self._provenance(session_id).labels
        if not untrusted_session:  # facts another process recorded count too
            untrusted_session = self._missing(session_id) is not None
        return any("untrusted" in v or ("unknown" in v and untrusted_session)
                   for v in labels.values())

    def _carried(self, session_id: str, tool: str, args: Any) -> frozenset[str]:
        """What a call's result must carry from its arguments: ``untrusted`` when a trusted
        tool takes tainted arguments, and the confidentiality labels of its arguments (what an
        encoder or a translator makes of a secret is still secret), whichever catalog named
        them (a replayed fact may bring one this catalog does not)."""
        if not isinstance(args, Mapping) or not args:
            return frozenset()
        trusted = self.catalog.get(tool).integrity == "trusted"
        recent = getattr(self._recent, "v", None)
        if recent is not None and recent[0] == session_id and recent[1] is args:
            labels = recent[2]  # what the decision computed: nothing more to look up
        else:  # worth labelling only where an argument can carry something
            with self._lock:
                prov = self._provenance(session_id)
                confidential = any(_confidential(x) for x in prov.labels) or \
                    any(_confidential(x) for x in prov.unplaced)
            if not confidential and not trusted:
                return frozenset()
            labels = self.arg_labels(session_id, args)
        out = {x for v in labels.values() for x in v}
        out = {x for x in out - _NOT_CONFIDENTIALITY if not x.startswith("tool:")}
        if trusted and self._tainting(session_id, args, labels):
            out.add("untrusted")
        return frozenset(out)

    def observe_result(self, action: Action, decision: Decision) -> Decision:
        # a decision denied before the tool name was checked carries the raw name
        tool = canonical_tool(decision.tool) if isinstance(decision.tool, str) else None
        info = self.catalog.get(tool) if tool else ToolInfo(str(decision.tool))
        integrity = info.integrity
        carried: frozenset[str] = frozenset()
        if tool:  # what the call's arguments carry into its result (see _carried)
            with self._lock:
                waiting = self._tainted_calls.get(decision.session, {}).get(tool)
                if waiting:
                    carried = waiting.pop(0)  # this result answers the oldest of them
            carried |= self._carried(decision.session, tool, action.args)
        if integrity == "trusted" and "untrusted" in carried:
            integrity = "untrusted"  # a trusted tool echoing what untrusted data chose
            decision = decision._replace(reasons=(
                *decision.reasons, f"flow: {decision.tool} is trusted, but this call took "
                "untrusted arguments: its result is untrusted"))
        labels = [integrity, info.confidentiality, f"tool:{tool or decision.tool}",
                  *sorted(carried - {"untrusted", info.confidentiality})]
        signal = injection_signal(action.result) if integrity != "trusted" else None
        if signal is not None:
            labels.append(INJECTION)
            decision = decision._replace(reasons=(
                *decision.reasons, f"flow: result reads like an injection ({signal})"))
        recorded = as_text(action.result)
        held = decision.allowed and info.handling == "quarantine"
        handle = _new_handle() if held else None
        with self._span(), self._recording(decision.session):
            with self._lock:
                prov = self._provenance(decision.session)
                prov.record(recorded, labels, info.keys)
            self._counted_fact(
                decision.session, prov, [x for x in labels if x != "trusted" and ":" not in x],
                self._fact({"k": "result", "tool": tool or str(decision.tool), "v": recorded,
                            "labels": labels, "keys": sorted(info.keys), "handle": handle,
                            "raw": decision.result if held else None}))
        if not decision.allowed or info.handling == "pass":
            return decision
        with self._lock:
            source = f"tool:{decision.tool}"
            if info.handling == "mark":
                shown = mark(decision.result, source)
            else:
                handle, shown = self._vault(decision.session).hold(decision.result, source,
                                                                   labels, handle)
                self._provenance(decision.session).record(handle, labels)
        return decision._replace(result=shown, obligations=(
            *decision.obligations, f"{info.handling}:catalog"))

    def label_result(self, decision: Decision, result: Any) -> Any:
        """``observe_result`` for the result of a call ``decision`` allowed, outside
        ``evaluate``; returns what the model may see."""
        seen = decision._replace(stage="post_tool", result=result, obligations=())
        action = Action(decision.tool, decision.args or EMPTY, "post_tool",
                        {"id": decision.agent}, {"id": decision.session}, EMPTY, result)
        return self.observe(action, seen).result  # replaying first, as in ``evaluate``

    # -- sessions (call with the lock held) -------------------------------------------------------
    def _provenance(self, session_id: str) -> Provenance:
        prov = self._flows.get(session_id)
        if prov is None:
            prov = self._flows[session_id] = Provenance()
            if len(self._flows) > MAX_FLOW_SESSIONS:
                evicted, _ = self._flows.popitem(last=False)
                self._vaults.pop(evicted, None)  # a handle must not outlive its labels
                self._recorded.pop(evicted, None)  # its counted facts now read as unseen
                self._seen.pop(evicted, None)
                self._counted.pop(evicted, None)
                self._tainted_calls.pop(evicted, None)
                self.evicted += 1
        else:
            self._flows.move_to_end(session_id)
        return prov

    def _vault(self, session_id: str) -> Quarantine:
        self._provenance(session_id)  # a vault exists only beside its session's provenance
        vault = self._vaults.get(session_id)
        if vault is None:
            vault = self._vaults[session_id] = Quarantine()
        return vault

    def __len__(self) -> int:
        return len(self._flows)


_NOT_CONFIDENTIALITY = frozenset({"trusted", "untrusted", "unknown", "selected", "user", "public",
                                  "untrusted_identifier", INJECTION, INCOMPLETE, ENDED})


def _confidential(label: str) -> bool:
    """A confidentiality label other than ``public`` (any catalog's: ``internal``, ``secret``,
    ``pii:hr``), not an integrity, a source or a session marker."""
    return label not in _NOT_CONFIDENTIALITY and not label.startswith("tool:")
