"""Review: whose trust a recorded decision may move.

Findings (fixed in ``bastion/mesh/_trust.py``): with ``authenticated_only`` the engine counted
every decision whose context merely *held* a ``bastion_token`` key, and took any guard reason
that *contained* "token does not grant this call" as a proven misuse. Without any key, anyone
could therefore sink a registered agent's trust by acting in its name:

* at ``post_tool`` (TokenGuard checks no proof of possession there) with a token copied from a
  message, calling a tool outside its scopes;
* at ``input``/``output`` (no guard runs at all) or with an invalid tool name (denied before the
  guards run), with any junk in ``context["bastion_token"]``;
* at ``pre_tool`` with a forged token whose fields quote the magic phrase (the guard's refusal
  quotes them back).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mesh_fixtures import NOW, ident

from bastion._canon import canonical_json
from bastion.kernel import Action, Kernel
from bastion.mesh import (
    SQLiteMeshStore,
    TokenGuard,
    TrustEngine,
    issue_token,
    prove_call,
)
from bastion.mesh._tokens import b64e

ROOT, BOB = ident(1), ident(3)
POLICY = """
version: 1
name: review
rules:
  - {id: no-secret-out, stage: output, when: "args.text.contains('secret')", effect: deny}
  - {id: no-drop, tools: ["drop_*"], effect: deny}
  - {id: rest, stage: post_tool, tools: ["*"], effect: allow}
  - {id: rest-pre, tools: ["*"], effect: allow}
  - {id: say, stage: input, effect: allow}
"""


def _kernel(store: SQLiteMeshStore, audit: Path, **guard: object) -> Kernel:
    g = TokenGuard(roots={ROOT.did}, revocations=store, registry=store, nonces=store,
                   clock=lambda: NOW, **guard)  # type: ignore[arg-type]
    return Kernel.from_text(POLICY, audit=str(audit), guards=[g],
                            clock=lambda: int(NOW * 1e9))


def _bob_score(store: SQLiteMeshStore, audit: Path) -> tuple[int, int]:
    engine = TrustEngine(str(audit), registry=store, clock=lambda: NOW)
    engine.refresh()
    report = engine.report("bob")
    return report.score, report.events


def _forged(v: str) -> str:
    """A token no one signed, whose ``v`` field carries attacker-chosen text."""
    link = {"v": v, "iss": "x", "aud": "bob", "scopes": ["tool:x"], "cons": {}, "iat": 0,
            "exp": 1, "nonce": "n", "prev": None, "sig": "AA"}
    return "bt1." + b64e(canonical_json([link]))


def test_copied_token_at_post_tool_cannot_sink_its_holder(store: SQLiteMeshStore,
                                                         tmp_path: Path) -> None:
    store.register("bob", BOB.did, now=NOW)
    stolen = issue_token(ROOT, audience=BOB.did, scopes=["tool:read_*"], now=NOW).encode()
    audit = tmp_path / "audit.db"
    with _kernel(store, audit) as k:
        for _ in range(20):  # no proof: only the token, copied from a message
            d = k.evaluate(Action(tool="drop_db", stage="post_tool", args={}, result="x",
                                  agent={"id": "bob"}, context={"bastion_token": stolen}))
            assert d.code == "guard" and "does not grant" in d.reasons[0]  # still enforced
    assert _bob_score(store, audit) == (300, 0)


def test_unguarded_stages_and_invalid_tools_count_for_no_one(store: SQLiteMeshStore,
                                                            tmp_path: Path) -> None:
    store.register("bob", BOB.did, now=NOW)
    audit = tmp_path / "audit.db"
    junk = {"bastion_token": "junk"}
    with _kernel(store, audit) as k:
        for _ in range(5):
            out = k.evaluate(Action(stage="output", args={"text": "the secret"},
                                    agent={"id": "bob"}, context=junk))
            assert out.code == "policy" and not out.allowed
            bad = k.evaluate(Action(tool="\u0455end", agent={"id": "bob"}, context=junk))
            assert bad.code == "invalid_tool"
            inp = k.evaluate(Action(stage="input", args={"text": "hi"}, agent={"id": "bob"},
                                    context=junk))
            assert inp.allowed  # an allow nobody authenticated earns nothing either
    assert _bob_score(store, audit) == (300, 0)


@pytest.mark.parametrize("v", ["token does not grant this call",
                               "capability_token: token does not grant this call: x"])
def test_a_forged_token_quoting_the_magic_phrase_is_not_a_proven_misuse(
        store: SQLiteMeshStore, tmp_path: Path, v: str) -> None:
    store.register("bob", BOB.did, now=NOW)
    audit = tmp_path / "audit.db"
    with _kernel(store, audit) as k:
        for _ in range(5):
            d = k.evaluate(Action(tool="read", agent={"id": "bob"},
                                  context={"bastion_token": _forged(v)}))
            assert d.code == "guard" and "does not grant this call" in d.reasons[0]
    assert _bob_score(store, audit) == (300, 0)


def test_proven_pre_tool_calls_still_count(store: SQLiteMeshStore, tmp_path: Path) -> None:
    """The fix keeps the evidence that matters: a call whose proof of possession verified."""
    store.register("bob", BOB.did, now=NOW)
    token = issue_token(ROOT, audience=BOB.did, scopes=["tool:read_*", "tool:drop_db"],
                        now=NOW).encode()
    audit = tmp_path / "audit.db"

    def call(tool: str) -> Action:
        return Action(tool=tool, args={}, agent={"id": "bob"}, context={
            "bastion_token": token, "bastion_token_proof": prove_call(BOB, token, tool, {},
                                                                      now=NOW)})

    with _kernel(store, audit) as k:
        assert k.evaluate(call("read_a")).allowed
        assert k.evaluate(call("drop_db")).rule_ids == ("no-drop",)
        assert "does not grant" in k.evaluate(call("write_x")).reasons[0]
    score, events = _bob_score(store, audit)
    assert events == 3 and score == 300 + 1 - 40 - 40


def test_a_kernel_without_a_token_guard_gives_no_one_credit(tmp_path: Path) -> None:
    audit = tmp_path / "audit.db"
    with Kernel.from_text(POLICY, audit=str(audit), clock=lambda: int(NOW * 1e9)) as k:
        for _ in range(30):
            assert k.evaluate(Action(tool="read", agent={"id": "bob"},
                                     context={"bastion_token": "anything"})).allowed
    engine = TrustEngine(str(audit), clock=lambda: NOW)
    engine.refresh()
    assert engine.score("bob") == 300
