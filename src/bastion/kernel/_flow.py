"""The kernel's information-flow state: per session, the provenance of what passed through it
and the quarantined results, and the flow facts it records at each stage (DESIGN.md "Flow
facts"). Thread-safe: one lock guards every session.

Bounded: at most ``MAX_FLOW_SESSIONS`` sessions (least recently used out, counted in
``evicted``); a session's quarantine vault goes with its provenance, so a handle never outlives
the labels of what it hides.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from bastion.flow import Provenance, ToolCatalog
from bastion.flow._results import (
    INJECTION,
    Quarantine,
    as_text,
    has_handle,
    injection_signal,
    mark,
)
from bastion.kernel._types import EMPTY, Action, Decision

MAX_FLOW_SESSIONS = 10_000  # sessions whose provenance is kept in memory (least recent out)


class FlowTracker:
    """Provenance and quarantine per session, for one kernel and its tool catalog."""

    def __init__(self, catalog: ToolCatalog):
        self.catalog = catalog
        self._flows: OrderedDict[str, Provenance] = OrderedDict()
        self._vaults: dict[str, Quarantine] = {}
        self._lock = threading.Lock()
        self.evicted = 0

    # -- what policies see ----------------------------------------------------------------------
    def session_facts(self, session_id: str) -> tuple[list[str], list[str]]:
        """The session's labels and its history of allowed calls."""
        with self._lock:
            prov = self._provenance(session_id)
            return prov.session_labels(), list(prov.history)

    def arg_labels(self, session_id: str, args: Any) -> dict[str, list[str]]:
        """Each argument's labels, including those of the quarantined values its handles stand
        for (kept with the handle, whatever provenance still remembers)."""
        if not isinstance(args, Mapping):
            return {}
        with self._lock:
            labels = self._provenance(session_id).labels_of_args(args)
            vault = self._vaults.get(session_id)
            if vault is not None:
                for name, value in args.items():
                    held = vault.labels_in(value)
                    if held:
                        merged = set(labels.get(name, ())) | held
                        if "untrusted" in merged:
                            merged -= {"trusted", "unknown"}
                        labels[name] = sorted(merged)
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
        stage = action.stage
        if stage == "input":
            if decision.allowed:
                with self._lock:
                    self._provenance(decision.session).record_input(action.args)
        elif stage == "post_tool":
            return self.observe_result(action, decision)
        elif stage == "pre_tool" and decision.allowed:
            with self._lock:
                if decision.args is not None and has_handle(decision.args):
                    args, used, missing = self._vault(decision.session).release(decision.args)
                    if missing:
                        return decision._replace(
                            effect="deny", code="quarantine", args=None, reasons=(
                                *decision.reasons, "unknown quarantine handle(s) in the "
                                f"arguments: {', '.join(sorted(set(missing)))}"))
                    decision = decision._replace(args=args, reasons=(
                        *decision.reasons, f"flow: released {', '.join(used)}"))
                self._provenance(decision.session).record_call(decision.tool)
        return decision

    def observe_result(self, action: Action, decision: Decision) -> Decision:
        info = self.catalog.get(decision.tool)
        labels = [info.integrity, info.confidentiality, f"tool:{decision.tool}"]
        signal = injection_signal(action.result) if info.integrity != "trusted" else None
        if signal is not None:
            labels.append(INJECTION)
            decision = decision._replace(reasons=(
                *decision.reasons, f"flow: result reads like an injection ({signal})"))
        with self._lock:
            self._provenance(decision.session).record(as_text(action.result), labels)
            if not decision.allowed or info.handling == "pass":
                return decision
            source = f"tool:{decision.tool}"
            if info.handling == "mark":
                shown = mark(decision.result, source)
            else:
                handle, shown = self._vault(decision.session).hold(decision.result, source,
                                                                   labels)
                self._provenance(decision.session).record(handle, labels)
        return decision._replace(result=shown, obligations=(
            *decision.obligations, f"{info.handling}:catalog"))

    def label_result(self, decision: Decision, result: Any) -> Any:
        """``observe_result`` for the result of a call ``decision`` allowed, outside
        ``evaluate``; returns what the model may see."""
        seen = decision._replace(stage="post_tool", result=result, obligations=())
        action = Action(decision.tool, decision.args or EMPTY, "post_tool",
                        {"id": decision.agent}, {"id": decision.session}, EMPTY, result)
        return self.observe_result(action, seen).result

    # -- sessions (call with the lock held) -------------------------------------------------------
    def _provenance(self, session_id: str) -> Provenance:
        prov = self._flows.get(session_id)
        if prov is None:
            prov = self._flows[session_id] = Provenance()
            if len(self._flows) > MAX_FLOW_SESSIONS:
                evicted, _ = self._flows.popitem(last=False)
                self._vaults.pop(evicted, None)  # a handle must not outlive its labels
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
