"""Per-session budgets and the loop breaker, kept in the state store (so a new kernel or
process sharing the store does not reset them). See ``bastion.policy.Budgets`` for the knobs.

Checked at ``pre_tool`` for allowed calls, in this order: cost and token budgets (usage the
caller reports), the session's tripped breaker, the retry budget of this exact call, the
repeat count of this exact call (tripping the breaker for the whole session), the call budget.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from bastion._canon import digest, jsonable, norm_text
from bastion.kernel._types import Action
from bastion.policy import Budgets, CompiledRule, Per
from bastion.state import StateStore

_MAX_KEYS = 10_000  # decisions whose outcome may still be reported
_KEY = re.compile(r"[0-9a-f]{32}")  # a call key (see _call_key): nothing after it
FOREVER = 1 << 40  # a window no counter outlives: budgets count for the session's lifetime
_MICRO = 1_000_000  # cost is counted in millionths


class SessionBudgets:
    def __init__(self, state: StateStore, budgets: Budgets):
        self._state = state
        self._b = budgets
        # decision id -> the key its call was checked under (the arguments as the agent gave
        # them: a redaction must not give a failing call a fresh retry budget)
        self._keys: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, action: Action, tool: str, session_id: str,
              ts: float, did: str = "") -> tuple[str, str] | None:
        """Per-session budgets and the loop breaker (see ``bastion.policy.Budgets``)."""
        b, state = self._b, self._state
        if b.session_cost is not None:
            spent = state.count(f"cost:{session_id}", FOREVER, ts) / _MICRO
            if spent >= b.session_cost:
                return "budget", f"session cost budget exhausted ({spent:g} of {b.session_cost:g})"
        if b.session_tokens is not None:
            used = state.count(f"tokens:{session_id}", FOREVER, ts)
            if used >= b.session_tokens:
                return "budget", f"session token budget exhausted ({used} of {b.session_tokens})"
        if b.max_repeats is not None or b.max_failures is not None:
            if state.count(f"breaker:{session_id}", FOREVER, ts) > 0:
                return "loop", ("the session's loop breaker has tripped; no further calls until "
                                "it is reset")
            call = _call_key(tool, action.args)
            if did and b.max_failures is not None:
                with self._lock:
                    self._keys[did] = call
                    if len(self._keys) > _MAX_KEYS:
                        self._keys.popitem(last=False)
            tripped = None
            if b.max_failures is not None:
                failed = state.count(f"fail:{session_id}:{call}", FOREVER, ts)
                if failed >= b.max_failures:
                    tripped = (f"a call failed {failed} times in the session (retry budget "
                               f"{b.max_failures}); the loop breaker has tripped")
            if tripped is None and b.max_repeats is not None:
                ok, _ = state.take(f"repeat:{session_id}:{call}", b.max_repeats, FOREVER, ts)
                if not ok:
                    tripped = (f"the same call was made {b.max_repeats} times in the session; "
                               "the loop breaker has tripped")
            if tripped is not None:
                state.add(f"breaker:{session_id}", 1, FOREVER, ts)
                return "loop", tripped
        budget = b.session_calls
        ok, _ = state.take(f"calls:{session_id}", budget or (1 << 62), FOREVER, ts)
        if not ok:
            return "budget", f"session call budget exhausted ({budget} calls)"
        return None

    def failed(self, session_id: str, tool: str, args: Any, now: float, did: str = "") -> None:
        """Count a failed call against its retry budget (under the key it was checked with)."""
        with self._lock:
            call = self._keys.pop(did, None) if did else None
        call = call or _call_key(tool, args)
        self._state.add(f"fail:{session_id}:{call}", 1, FOREVER, now)

    def reset(self, session_id: str, now: float) -> None:
        delete = getattr(self._state, "delete", None)
        if delete is not None:  # at once: two resets together must not take it below zero
            delete([f"breaker:{session_id}"])
        else:
            trips = self._state.count(f"breaker:{session_id}", FOREVER, now)
            self._state.add(f"breaker:{session_id}", -trips, FOREVER, now)
        for kind in ("repeat", "fail"):  # this session's keys only: not those of "ID:more"
            prefix = f"{kind}:{session_id}:"
            many = getattr(self._state, "counts", None)
            delete = getattr(self._state, "delete", None)
            if many is not None and delete is not None:
                delete([k for k in many(prefix, FOREVER, now)
                        if _KEY.fullmatch(k[len(prefix):])])
            else:
                self._state.clear_prefix(prefix)

    def add_usage(self, session_id: str, cost: float, tokens: int, now: float) -> None:
        if cost:  # rounded up: many tiny reports must not add up to nothing
            self._state.add(f"cost:{session_id}", math.ceil(cost * _MICRO), FOREVER, now)
        if tokens:
            self._state.add(f"tokens:{session_id}", int(tokens), FOREVER, now)


def _call_key(tool: str, args: Any) -> str:
    """What makes two calls "the same call" for the loop breaker: the tool and the arguments,
    with strings normalised (case, NFKC, zero-width) and integral floats as integers, so
    spelling variants of one call count together."""
    return digest({"tool": tool, "args": _loose(jsonable(args if args is not None else {}))}
                  )[7:39]


def _loose(value: Any) -> Any:
    if isinstance(value, str):
        return norm_text(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {norm_text(k): _loose(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_loose(v) for v in value]
    return value


def rate_limited(state: StateStore, rules: Iterable[CompiledRule], tool: str, agent_id: str,
                 session_id: str, ts: float) -> tuple[str, str] | None:
    """Take one from each deciding rule's rate limit; ``("rate_limit", why)`` for the first
    that is spent (the takes before it stand: they were allowed)."""
    for cr in rules:
        lim = cr.rule.limit
        if lim is None:
            continue
        who = {Per.AGENT: agent_id, Per.SESSION: session_id, Per.TOOL: tool}[lim.per]
        ok, _ = state.take(f"rate:{cr.rule.id}:{lim.per.value}:{who}", lim.count, lim.window_s,
                           ts)
        if not ok:
            return "rate_limit", (f"rate limit of rule {cr.rule.id!r} exceeded "
                                  f"({lim.text} per {lim.per.value})")
    return None
