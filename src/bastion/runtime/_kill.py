"""The kill switch: stop an agent, a session, a tool or the whole fleet, now.

Engaging it, step by step:

1. Write a durable flag (``kill:all``, ``kill:agent:ID``, ``kill:session:ID``,
   ``kill:tool:NAME``) to the state store. Every kernel sharing the store reads the flags at
   every decision (a constant-time read of a shared generation counter) and denies
   matching actions with code ``kill_switch`` until the flag is released.
2. Cancel the matching async governed calls running in this process; each ends in
   ``GovernanceDenied`` with code ``kill_switch``.
3. Kill this process's running sandboxes that the scope covers (``code_tool`` labels them
   with agent, session and tool), then run the registered stop hooks.
4. Record the engagement in the audit log, with who and why.

Other processes see the flag on their next decision; a ``KillSwitch.watch`` thread in each
process also cancels their in-flight async calls within its polling interval. Releasing needs an
identity (``by``) and is audited too. With ``release_keys`` (name → Ed25519 public key or
``did:key``), a release must also carry a proof (``release_proof``): a signature by that name's
key over the flag, the reason and a timestamp within ``PROOF_SKEW_S``, usable once — so the
authority to release is a key, not a name anyone can type. Sync calls cannot be interrupted
safely in Python: they are stopped at their next decision.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion._canon import canonical_json, digest, norm_text
from bastion._errors import ConfigError
from bastion.kernel._inflight import IN_FLIGHT, Call
from bastion.state import StateStore


def flag_key(*, agent: str | None = None, session: str | None = None, tool: str | None = None,
             everything: bool = False) -> str:
    """The flag for exactly one scope."""
    given = [k for k, v in (("agent", agent), ("session", session), ("tool", tool)) if v]
    if everything + len(given) != 1:
        raise ConfigError("name exactly one scope: agent, session, tool or all")
    if everything:
        return "kill:all"
    kind = given[0]
    value = {"agent": agent, "session": session, "tool": tool}[kind]
    if kind == "tool":
        from bastion._canon import canonical_tool

        value = canonical_tool(str(value))
        if value is None:
            raise ConfigError(f"invalid tool name {tool!r}")
    return f"kill:{kind}:{value}"


PROOF_SKEW_S = 300  # how far a release proof's timestamp may be from the switch's clock


def _proof_body(flag: str, by: str, reason: str, ts: int) -> bytes:
    return canonical_json({"op": "kill.release", "flag": flag, "by": norm_text(by),
                           "reason": reason, "ts": ts})


def release_proof(key: Ed25519PrivateKey, *, by: str, reason: str = "", agent: str | None = None,
                  session: str | None = None, tool: str | None = None,
                  everything: bool = False, now: float | None = None) -> str:
    """A single-use proof that ``by`` (holding ``key``) releases exactly this scope now."""
    ts = int(time.time() if now is None else now)
    flag = flag_key(agent=agent, session=session, tool=tool, everything=everything)
    sig = key.sign(_proof_body(flag, by, reason, ts))
    return f"{ts}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"


def _public(key: Ed25519PublicKey | str) -> Ed25519PublicKey:
    if isinstance(key, Ed25519PublicKey):
        return key
    from bastion.mesh import public_from_did

    return public_from_did(key)


def kill_hit(flags: Mapping[str, str], *, agent: str, session: str, tool: str) -> str | None:
    """The engaged scope (``"all"``, ``"agent:ID"``, ...) that stops this call, or ``None``;
    ``tool`` is a canonical tool name."""
    for key in ("kill:all", f"kill:agent:{agent}", f"kill:session:{session}", f"kill:tool:{tool}"):
        if key in flags:
            return key.removeprefix("kill:")
    return None


def _matcher(flags: Mapping[str, str]) -> Callable[[Call], str | None]:
    def match(call: Call) -> str | None:
        return kill_hit(flags, agent=call.agent, session=call.session, tool=call.tool)

    return match


def _stop_sandboxes(flag: str) -> None:
    """Kill this process's running sandboxes that the flag covers (by their labels)."""
    from bastion.runtime._sandbox import kill_sandboxes

    scope = flag.removeprefix("kill:")
    if scope == "all":
        kill_sandboxes(lambda labels: True, "kill_switch")
        return
    kind, _, value = scope.partition(":")
    kill_sandboxes(lambda labels: labels.get(kind) == value, "kill_switch")


class KillSwitch:
    """Engage and release kill flags; stop what is running (module docstring, steps 1-4)."""

    def __init__(self, state: StateStore, *, audit: Any = None,
                 releasers: Collection[str] | None = None,
                 release_keys: Mapping[str, Ed25519PublicKey | str] | None = None,
                 clock: Callable[[], int] = time.time_ns):
        self._state = state
        self._audit = audit
        self._releasers = None if releasers is None else {norm_text(r) for r in releasers}
        self._keys = None if release_keys is None else {
            norm_text(name): _public(key) for name, key in release_keys.items()}
        self._clock = clock
        self._hooks: list[Callable[[str], object]] = []
        self.watch_errors = 0  # failed rounds of ``watch`` (each one is retried)

    @classmethod
    def for_kernel(cls, kernel: Any) -> KillSwitch:
        """The kill switch over a kernel's own state store and audit log."""
        return cls(kernel.state, audit=kernel.audit)

    def on_engage(self, hook: Callable[[str], object]) -> None:
        """Run ``hook(flag)`` whenever a flag is engaged (step 3)."""
        self._hooks.append(hook)

    def engage(self, *, by: str, reason: str = "", agent: str | None = None,
               session: str | None = None, tool: str | None = None,
               everything: bool = False) -> tuple[str, int]:
        """Engage one scope; returns the flag and how many running calls were cancelled."""
        if not isinstance(by, str) or not by.strip():
            raise ConfigError("engaging the kill switch needs an identity ('by')")
        key = flag_key(agent=agent, session=session, tool=tool, everything=everything)
        record = {"by": by, "reason": reason, "ts": self._clock()}
        failure: Exception | None = None
        try:
            self._state.set_flag(key, json.dumps(record))  # step 1
        except Exception as exc:  # the store is down: what runs here is still stopped
            failure = exc
        cancelled = IN_FLIGHT.cancel(_matcher({key: ""}))  # step 2
        errors = [] if failure is None else [f"flag not written: {type(failure).__name__}: "
                                             f"{failure}"]
        for hook in (_stop_sandboxes, *self._hooks):  # step 3
            try:
                hook(key)
            except Exception as exc:  # a failing hook must not stop the others
                errors.append(f"{type(exc).__name__}: {exc}")
        self._record("kill.engage", key, by, reason, cancelled=cancelled, errors=errors)
        if failure is not None:  # the fleet was not told: the caller must know
            raise failure
        return key, cancelled

    def release(self, *, by: str, reason: str = "", agent: str | None = None,
                session: str | None = None, tool: str | None = None,
                everything: bool = False, proof: str | None = None) -> bool:
        """Release one scope; False when it was not engaged.

        Releasing is the dangerous direction, so it is refused (``ConfigError``) without an
        audit log to record it, by an identity outside ``releasers`` (when given), by the very
        agent the flag stops and, with ``release_keys``, without a valid, fresh, unused
        ``proof`` signed by ``by``'s key for exactly this scope and reason. A refusal is
        audited (``kill.release_refused``).
        """
        if not isinstance(by, str) or not by.strip():
            raise ConfigError("releasing the kill switch needs an identity ('by')")
        if self._audit is None:
            raise ConfigError("releasing the kill switch must be audited: give it an audit log")
        if self._releasers is not None and norm_text(by) not in self._releasers:
            raise ConfigError(f"{by!r} may not release the kill switch")
        if agent is not None and norm_text(by) == norm_text(agent):
            raise ConfigError("an agent cannot release its own kill switch")
        key = flag_key(agent=agent, session=session, tool=tool, everything=everything)
        if self._keys is not None:
            problem = self._check_proof(key, by, reason, proof)
            if problem is not None:
                self._record("kill.release_refused", key, by, reason, problem=problem)
                raise ConfigError(f"release of {key!r} refused: {problem}")
        engaged = key in self._state.flags()
        # recorded before it happens: a release the audit log cannot hold does not happen
        self._record("kill.release", key, by, reason, released=engaged)
        released = self._state.clear_flag(key)
        return released

    def _check_proof(self, flag: str, by: str, reason: str, proof: str | None) -> str | None:
        assert self._keys is not None
        public = self._keys.get(norm_text(by))
        if public is None:
            return f"{by!r} holds no release key"
        if not proof:
            return "a signed release proof is required"
        ts_text, _, sig_text = proof.partition(".")
        try:
            ts = int(ts_text)
            sig = base64.urlsafe_b64decode(sig_text + "=" * (-len(sig_text) % 4))
            public.verify(sig, _proof_body(flag, by, reason, ts))
        except (ValueError, InvalidSignature):
            return "the proof's signature does not verify for this scope, reason and signer"
        now = self._clock() / 1e9
        if abs(now - ts) > PROOF_SKEW_S:
            return f"the proof is stale (signed {int(now - ts)} s from now)"
        # Single use is keyed on what was signed, not on the proof's text (which has many
        # spellings: "+ts", "0ts", "t_s", padding), and counted in the window of the signed
        # time, not of the present, so that no window boundary makes a used proof fresh again.
        fresh, _ = self._state.take(
            f"release-proof:{digest(_proof_body(flag, by, reason, ts))}", 1,
            2 * PROOF_SKEW_S + 1, ts)
        return None if fresh else "the proof was already used"

    def engaged(self) -> dict[str, dict[str, Any]]:
        """Every engaged flag with who engaged it, why and when."""
        out = {}
        for key, value in self._state.flags().items():
            if key.startswith("kill:"):
                try:
                    out[key] = json.loads(value)
                except ValueError:
                    out[key] = {"raw": value}
        return out

    def watch(self, *, interval_s: float = 0.05) -> Callable[[], None]:
        """Cancel in-flight calls and kill covered sandboxes here when another process engages a
        flag; returns a stop function. The check is one read of the shared generation counter
        per interval (flags are re-read from the store only when it changed). A round that
        fails (e.g. the store is locked) is counted in ``watch_errors``, audited as
        ``kill.watch_error`` (the first of each run of failures) and retried: the watch never
        ends silently."""
        stop = threading.Event()

        def loop() -> None:
            failing = False
            while not stop.wait(interval_s):
                try:
                    flags = {k: v for k, v in self._state.flags().items()
                             if k.startswith("kill:")}
                    if flags:
                        IN_FLIGHT.cancel(_matcher(flags))
                        failed = None
                        for flag in flags:  # each flag's sandboxes, whatever another's did
                            try:
                                _stop_sandboxes(flag)
                            except Exception as exc:
                                failed = exc
                        if failed is not None:
                            raise failed  # counted and audited below
                except Exception as exc:  # a failed round must not end the watch silently
                    self.watch_errors += 1
                    if not failing:  # audit the first failure of each run of failures
                        failing = True
                        with contextlib.suppress(Exception):
                            self._record("kill.watch_error", "", "watch", "",
                                         error=f"{type(exc).__name__}: {exc}")
                else:
                    failing = False

        thread = threading.Thread(target=loop, name="bastion-kill-watch", daemon=True)
        thread.start()
        return stop.set

    def _record(self, kind: str, key: str, by: str, reason: str, **extra: Any) -> None:
        if self._audit is None:
            return
        ts = self._clock()
        self._audit.append({"kind": kind, "id": f"{kind}:{key}:{ts}", "ts": ts, "flag": key,
                            "by": by, "reason": reason, **extra})
