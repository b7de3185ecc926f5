"""The token guard and the trust provider on a real kernel; trust scoring properties."""

from __future__ import annotations

from pathlib import Path

import pytest
from mesh_fixtures import NOW, ident

from bastion.kernel import Action, Kernel
from bastion.mesh import (
    SQLiteMeshStore,
    TokenGuard,
    TrustConfig,
    TrustEngine,
    TrustFacts,
    delegate_token,
    issue_token,
    make_attestation,
    record_attestation,
    tier_of,
)

ROOT, ALICE, BOB = ident(1), ident(2), ident(3)
POLICY = """
version: 1
name: mesh-test
default: deny
rules:
  - id: no-drop
    tools: ["drop_*"]
    effect: deny
  - id: big-pay-needs-trust
    tools: ["pay"]
    when: "args.amount > 50 && agent.trust < 600"
    effect: deny
  - id: allow-rest
    tools: ["*"]
    effect: allow
"""
DAY = 86400


def _kernel(store: SQLiteMeshStore, tmp_path: Path, facts: object = None) -> Kernel:
    guard = TokenGuard(roots={ROOT.did}, revocations=store, registry=store, nonces=store,
                       clock=lambda: NOW)
    return Kernel.from_text(POLICY, audit=str(tmp_path / "audit.db"), guards=[guard],
                            agent_facts=facts)


def _act(tool: str, token: str | None, agent: str = "bob", holder: object = None,
         **args: object) -> Action:
    """An action presenting ``token`` with a proof of possession signed by ``holder``
    (BOB unless given; ``False``: no proof)."""
    from bastion.mesh import prove_call

    context: dict[str, object] = {}
    if token:
        context["bastion_token"] = token
        if holder is not False:
            context["bastion_token_proof"] = prove_call(holder or BOB, token, tool, args,  # type: ignore[arg-type]
                                                        now=NOW)
    return Action(tool=tool, args=args, agent={"id": agent}, context=context)


def test_guard_enforces_presented_token(store: SQLiteMeshStore, tmp_path: Path) -> None:
    store.register("alice", ALICE.did, now=NOW)
    store.register("bob", BOB.did, now=NOW)
    parent = issue_token(ROOT, audience=ALICE.did, scopes=["tool:read_*", "tool:pay"],
                         constraints={"tool:pay": {"amount": {"max": 100}}}, now=NOW)
    token = delegate_token(parent, ALICE, audience="bob", scopes=["tool:read_file", "tool:pay"],
                           now=NOW).encode()
    with _kernel(store, tmp_path) as k:
        assert k.evaluate(_act("read_file", token)).allowed
        d = k.evaluate(_act("read_db", token))
        assert d.code == "guard" and "outside the token's scopes" in d.reasons[0]
        d = k.evaluate(_act("pay", token, amount=500))
        assert not d.allowed and "exceeds max 100" in d.reasons[0]
        assert "no capability token" in k.evaluate(_act("read_file", None)).reasons[0]
        assert "audience" in k.evaluate(_act("read_file", token, agent="alice")).reasons[0]
        # possession: a copied token is useless without the audience's key
        assert "no proof" in k.evaluate(_act("read_file", token, holder=False)).reasons[0]
        stolen = k.evaluate(_act("read_file", token, holder=ALICE))  # signed by the wrong key
        assert stolen.code == "guard" and "does not verify" in stolen.reasons[0]
        from bastion.mesh import prove_call

        proof = prove_call(BOB, token, "read_file", {"path": "a"}, now=NOW)
        swapped = Action(tool="read_file", args={"path": "b"}, agent={"id": "bob"},
                         context={"bastion_token": token, "bastion_token_proof": proof})
        assert "another token, tool or arguments" in k.evaluate(swapped).reasons[0]
        first = swapped._replace(args={"path": "a"})
        assert k.evaluate(first).allowed
        assert "replay" in k.evaluate(first).reasons[0]
        store.revoke(parent.id, now=NOW)
        assert "revoked" in k.evaluate(_act("read_file", token)).reasons[0]


def test_trust_facts_reach_cel_and_flooding_cannot_inflate(store: SQLiteMeshStore,
                                                         tmp_path: Path) -> None:
    store.register("bob", BOB.did, roles=["payer"], now=NOW)
    token = issue_token(ROOT, audience=BOB.did, scopes=["tool:*"], now=NOW).encode()
    clock = [NOW]
    with Kernel.from_text(POLICY, audit=str(tmp_path / "a.db"), clock=lambda: int(clock[0] * 1e9),
                          guards=[TokenGuard(roots={ROOT.did}, registry=store, nonces=store,
                                             clock=lambda: NOW)]) as k:
        engine = TrustEngine(k.audit, registry=store, clock=lambda: clock[0])
        facts = TrustFacts(engine, registry=store, ttl_s=0)
        k._facts = facts  # the kernel under test consults the provider built on its own log
        assert facts("bob")["tier"] == "probation" and facts("bob")["roles"] == ["payer"]
        for _ in range(500):  # a flood of allowed calls in one period
            k.evaluate(_act("read_file", token))
        assert facts("bob")["trust"] == 300 + 25
        assert facts("nobody")["trust"] == 0  # unregistered: untrusted
        d = k.evaluate(_act("pay", token, amount=80))
        assert not d.allowed and d.rule_ids == ("big-pay-needs-trust",)


def _decision(agent: str, t: float, effect: str = "allow", code: str = "policy",
              rules: tuple[str, ...] = ("allow-rest",), did: str = "") -> dict[str, object]:
    return {"kind": "decision", "id": did or f"d{t}", "ts": int(t * 1e9), "agent": agent,
            "stage": "pre_tool", "guards": ["capability_token"], "effect": effect, "code": code,
            "rule_ids": list(rules),
            "context": {"bastion_token": {"$masked": "sha256:00"}}}  # authenticated by a token


def test_violation_is_not_washed_out_and_gain_is_bounded() -> None:
    clock = [NOW]
    engine = TrustEngine(None, verify_log=False, clock=lambda: clock[0])
    engine.feed([_decision("a", NOW + i) for i in range(100)])
    assert engine.score("a") == 325
    engine.feed([_decision("a", NOW + 200, "deny", rules=("no-drop",))])
    engine.feed([_decision("a", NOW + 300 + i) for i in range(1000)])
    assert engine.score("a") == 285  # the rest of the period earns nothing
    report = engine.report("a")
    kinds = {c.kind: c for c in report.breakdown}
    assert kinds["violation"].count == 1 and kinds["violation"].applied == -40
    assert kinds["allowed"].count == 1100 and kinds["allowed"].applied == 25


def test_decay_toward_prior_and_new_agents_start_low() -> None:
    clock = [NOW]
    engine = TrustEngine(None, verify_log=False, clock=lambda: clock[0],
                         config=TrustConfig(half_life_s=10 * DAY))
    assert engine.report("new").tier == "probation" and engine.score("new") == 300
    for day in range(30):
        engine.feed([_decision("a", NOW + day * DAY + i) for i in range(30)])
    high = engine.score("a")
    assert 300 + 25 * 10 < high <= 300 + 25 * 30
    clock[0] = NOW + 29 * DAY + 10 * DAY
    assert abs((engine.score("a") - 300) - (high - 300) / 2) <= 2  # one half-life later
    assert engine.report("a").decay < 0


def test_severe_violation_drops_a_tier_at_once() -> None:
    engine = TrustEngine(None, verify_log=False, clock=lambda: NOW + 100 * DAY,
                         config=TrustConfig(severe_rules=frozenset({"exfil"}),
                                            half_life_s=1e12))
    for day in range(10):
        engine.feed([_decision("a", NOW + day * DAY + i) for i in range(30)])
    before = engine.score("a")
    engine.feed([_decision("a", NOW + 21 * DAY, "deny", rules=("exfil",))])
    after = engine.report("a")
    assert before == 550 and tier_of(before)[0] == "standard"
    assert after.score == 399 - 150 and after.tier == "probation"
    assert after.severe_drops == 1 and after.ring == 3


def test_attestations_count_only_when_signed_by_another_registered_identity(
        store: SQLiteMeshStore, tmp_path: Path) -> None:
    from bastion.audit import AuditLog

    store.register("alice", ALICE.did, now=NOW)
    store.register("bob", BOB.did, now=NOW)
    log = AuditLog.open(str(tmp_path / "att.db"))
    try:
        record_attestation(log, make_attestation(ALICE, subject="bob", kind="positive",
                                                 weight=10, at=int(NOW)),
                           clock=lambda: int(NOW * 1e9))
        record_attestation(log, make_attestation(BOB, subject="bob", kind="positive",
                                                 weight=20, at=int(NOW)))  # self: ignored
        stranger = make_attestation(ident(9), subject="bob", kind="positive", weight=20,
                                    at=int(NOW))
        record_attestation(log, stranger)  # unregistered issuer: ignored
        forged = {**make_attestation(ALICE, subject="bob", kind="positive", at=int(NOW)),
                  "weight": 20}
        with pytest.raises(Exception, match="signature"):
            record_attestation(log, forged)
        log.append({"kind": "attestation", "id": "raw", "ts": int(NOW * 1e9), "agent": "bob",
                    "attestation": forged})  # smuggled past record_attestation: still ignored
        engine = TrustEngine(log, registry=store, clock=lambda: NOW)
        engine.refresh()
        assert engine.score("bob") == 300  # alice is new (probation): her word does not count
        engine = TrustEngine(log, registry=store, clock=lambda: NOW,
                             config=TrustConfig(min_attester_trust=0))
        engine.refresh()
        assert engine.score("bob") == 310  # only alice's real, signed attestation counted
    finally:
        log.close()


def test_unauthenticated_guard_denials_do_not_sink_the_claimed_agent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Review finding: anyone could drive another agent's trust to 0 by making tokenless calls
    in its name. A denial for a missing or invalid token now counts against no one; a denial
    for a verified token used outside its scopes still counts."""
    import time as _time

    from bastion import Action, Kernel
    from bastion.mesh import (
        Identity,
        TokenGuard,
        TrustEngine,
        issue_token,
        open_mesh_store,
    )

    now = _time.time()
    root, bob = Identity.generate(), Identity.generate()
    store = open_mesh_store(tmp_path / "mesh.db")
    store.register("bob", bob.did, roles=[], now=now)
    guard = TokenGuard(roots={root.did}, revocations=store, registry=store, nonces=store)
    policy = "version: 1\nrules:\n  - {id: all, effect: allow}\n"
    log = tmp_path / "audit.db"
    with Kernel.from_text(policy, audit=log, guards=[guard]) as k:
        for _ in range(8):  # an impostor without a token, claiming to be bob
            assert k.evaluate(Action(tool="anything", agent={"id": "bob"})).code == "guard"
    engine = TrustEngine(str(log), registry=store)
    engine.refresh()
    before = engine.report("bob").score
    token = issue_token(root, audience=bob.did, scopes=["tool:read_*"], ttl_s=3600,
                        now=now).encode()
    with Kernel.from_text(policy, audit=log, guards=[guard]) as k:
        from bastion.mesh import prove_call

        d = k.evaluate(Action(tool="wire_money", agent={"id": "bob"}, context={
            "bastion_token": token,
            "bastion_token_proof": prove_call(bob, token, "wire_money", {}, now=_time.time())}))
        assert d.code == "guard" and "does not grant" in d.reasons[0]
    engine.refresh()
    after = engine.report("bob").score
    assert before == 300 and after < before
    store.close()


def test_attestation_flooding_and_retired_keys_do_not_count(store: SQLiteMeshStore,
                                                            tmp_path: Path) -> None:
    """Review findings: twenty fresh attestations applied in full, and a rotated-away key's
    attestations still counted."""
    from bastion.audit import AuditLog
    from bastion.mesh import rotation_statement

    store.register("alice", ALICE.did, now=NOW)
    store.register("carol", ident(7).did, now=NOW)
    cfg = TrustConfig(min_attester_trust=0)

    def score_after(n: int, name: str) -> int:
        with AuditLog.open(str(tmp_path / name)) as log:
            for i in range(n):
                record_attestation(log, make_attestation(ALICE, subject="carol",
                                                         kind="negative", weight=20,
                                                         at=int(NOW) + i))
            engine = TrustEngine(log, registry=store, clock=lambda: NOW + 30, config=cfg)
            engine.refresh()
            return engine.score("carol")

    one, twenty = score_after(1, "one.db"), score_after(20, "twenty.db")
    assert one < 300 and twenty == one  # once per issuer, subject and period
    store.rotate("alice", rotation_statement(ALICE, ident(8), agent_id="alice", at=int(NOW)),
                 now=NOW)
    assert score_after(1, "retired.db") == 300  # alice's old key is retired: nothing counts


def test_out_of_order_events_do_not_reset_the_gain_cap() -> None:
    """Review finding: alternating timestamps across a period boundary reset the cap (and the
    violation flag) on every event, so 400 allowed calls credited +400."""
    engine = TrustEngine(None, verify_log=False, clock=lambda: NOW + 3 * DAY,
                         config=TrustConfig(half_life_s=1e12))
    boundary = (int(NOW // DAY) + 1) * DAY
    engine.feed([_decision("a", boundary + 1, "deny", rules=("r",))])
    engine.feed([_decision("a", boundary + (-1 if i % 2 else 2)) for i in range(400)])
    assert engine.score("a") <= 300


def test_refresh_verifies_only_new_entries_and_still_catches_tampering(tmp_path: Path) -> None:
    """Review finding: every refresh re-verified the whole log. Now the first refresh verifies
    it in full and later ones only what was appended — a forged new entry still fails."""
    import sqlite3

    from bastion import Action, Kernel
    from bastion.mesh import MeshError

    log = tmp_path / "audit.db"
    policy = "version: 1\nrules:\n  - {id: all, effect: allow}\n"
    with Kernel.from_text(policy, audit=log) as k:
        for _ in range(5):
            k.evaluate(Action(tool="t", agent={"id": "a"}))
    engine = TrustEngine(str(log), config=TrustConfig(authenticated_only=False))
    engine.refresh()
    first = engine.report("a").events
    with Kernel.from_text(policy, audit=log) as k:
        k.evaluate(Action(tool="t", agent={"id": "a"}))
    engine.refresh()
    assert engine.report("a").events == first + 1
    with Kernel.from_text(policy, audit=log) as k:
        k.evaluate(Action(tool="t", agent={"id": "a"}))
    db = sqlite3.connect(log)
    seq = db.execute("select max(seq) from entries").fetchone()[0]
    body = db.execute("select body from entries where seq=?", (seq,)).fetchone()[0]
    forged = bytes(body).replace(b'"allow"', b'"deny"', 1)
    db.execute("update entries set body=? where seq=?", (forged, seq))
    db.commit()
    db.close()
    with pytest.raises(MeshError, match="mac mismatch"):
        engine.refresh()


def test_only_decisions_that_carried_a_token_count_by_default() -> None:
    """The agent id in an action is a claim: without a token, neither credit nor blame."""
    tokenless = [{**_decision("a", NOW + i), "context": {}} for i in range(50)]
    engine = TrustEngine(None, verify_log=False, clock=lambda: NOW + 60)
    engine.feed(tokenless)
    engine.feed([{**_decision("a", NOW + 55, "deny"), "context": {}}])
    assert engine.score("a") == 300 and engine.report("a").events == 0
    engine.feed([_decision("a", NOW + 56)])
    assert engine.score("a") == 301
    relaxed = TrustEngine(None, verify_log=False, clock=lambda: NOW + 60,
                          config=TrustConfig(authenticated_only=False))
    relaxed.feed(tokenless)
    assert relaxed.score("a") == 325
