"""Review: capability tokens under attack — encodings, look-alikes, globs, constraint semantics
and the cost of verifying a hostile token.

Findings (fixed in ``bastion/mesh/_scopes.py`` and ``_tokens.py``):

* narrowing compared every pair of ``in`` values (and scopes) of consecutive links; a holder
  could delegate to itself two links of ~10 000 ``in`` values each and every verification of
  that (copyable, replayable) token took a minute of CPU. ``in`` lists and scopes per link are
  now bounded (``MAX_IN``, ``MAX_SCOPES``).
* an integer argument beyond a float's range made ``math.isfinite`` raise ``OverflowError``
  inside the guard instead of a refusal; one as a rule bound raised it from ``issue_token``, or
  (beyond 64 bits) issued a token that could never verify.
"""

from __future__ import annotations

import base64
import math
import time
from typing import Any

import pytest
from mesh_fixtures import NOW, ident

from bastion._canon import canonical_json
from bastion._errors import ConfigError
from bastion.mesh import TokenError, VerifiedToken, delegate_token, issue_token, verify_token
from bastion.mesh._keys import Identity
from bastion.mesh._scopes import MAX_IN, MAX_SCOPES
from bastion.mesh._tokens import DOMAIN, PREFIX, b64e, link_id

ROOT, ALICE, BOB = ident(1), ident(2), ident(3)


def _verify(text: str, **kw: Any) -> VerifiedToken:
    return verify_token(text, roots={ROOT.did}, now=NOW, **kw)


def _signed(issuer: Identity, body: dict[str, Any]) -> dict[str, Any]:
    """A link signed properly, whatever it holds (what a hostile holder can produce)."""
    return {**body, "sig": b64e(issuer.sign(DOMAIN, canonical_json(body)))}


def _link(issuer: Identity, aud: str, prev: str | None, **over: Any) -> dict[str, Any]:
    body = {"v": 1, "iss": issuer.did, "aud": aud, "scopes": ["tool:x"], "cons": {},
            "iat": int(NOW), "exp": int(NOW) + 3600, "nonce": "00", "prev": prev, **over}
    return _signed(issuer, body)


def _encode(*links: dict[str, Any]) -> str:
    return PREFIX + b64e(canonical_json(list(links)))


def test_hostile_in_lists_are_refused_and_verification_stays_cheap() -> None:
    root = _link(ROOT, BOB.did, None)
    slow = [2] * 10_000 + [1]  # each child value would scan the whole parent list
    one = _link(BOB, BOB.did, link_id(root), cons={"tool:x": {"a": {"in": slow}}})
    two = _link(BOB, BOB.did, link_id(one), cons={"tool:x": {"a": {"in": [1] * 10_000}}})
    started = time.perf_counter()
    with pytest.raises(TokenError) as err:
        _verify(_encode(root, one, two))
    assert err.value.reason == "malformed" and f"at most {MAX_IN}" in str(err.value)
    assert time.perf_counter() - started < 1.0
    with pytest.raises(ConfigError, match=f"at most {MAX_IN}"):
        issue_token(ROOT, audience=BOB.did, scopes=["tool:x"],
                    constraints={"tool:x": {"a": {"in": list(range(MAX_IN + 1))}}}, now=NOW)
    # at the bound, two links of MAX_IN values each verify in well under a second
    full = issue_token(ROOT, audience=BOB.did, scopes=["tool:x"],
                       constraints={"tool:x": {"a": {"in": [2] * (MAX_IN - 1) + [1]}}},
                       now=NOW)
    full = delegate_token(full, BOB, audience=BOB.did, now=NOW,
                          constraints={"tool:x": {"a": {"in": [1] * MAX_IN}}})
    started = time.perf_counter()
    assert _verify(full.encode()).permits("x", {"a": 1}) is None
    assert time.perf_counter() - started < 0.5


def test_scopes_per_link_are_bounded() -> None:
    many = [f"tool:t{i}" for i in range(MAX_SCOPES + 1)]
    with pytest.raises(ConfigError, match=f"at most {MAX_SCOPES} scopes"):
        issue_token(ROOT, audience=BOB.did, scopes=many, now=NOW)
    with pytest.raises(TokenError, match="malformed"):
        _verify(_encode(_link(ROOT, BOB.did, None, scopes=sorted(many))))
    assert _verify(issue_token(ROOT, audience=BOB.did, scopes=many[:MAX_SCOPES],
                               now=NOW).encode()).permits("t0", {}) is None


@pytest.mark.parametrize(("value", "granted"), [
    (100, True), (100.0, True), (-5, True), (99.99, True),
    (100.0000001, False), (101, False), ("50", False), (True, False), (False, False),
    (math.nan, False), (math.inf, False), (-math.inf, False), (None, False), ([50], False),
    ({"$bigint": "5"}, False), pytest.param(10**400, False, id="1e400"),
    pytest.param(-(10**400), True, id="-1e400"), (2**70, False),
])
def test_amount_at_most_100(value: Any, granted: bool) -> None:
    token = issue_token(ROOT, audience=BOB.did, scopes=["tool:pay"],
                        constraints={"tool:pay": {"amount": {"max": 100}}}, now=NOW)
    problem = _verify(token.encode()).permits("pay", {"amount": value})
    assert (problem is None) is granted, problem


@pytest.mark.parametrize("bound", [pytest.param(10**400, id="1e400"), -(2**64) - 1, 2**64,
                                   math.nan, math.inf, True, "100"])
def test_rule_bounds_a_token_cannot_carry_are_config_errors(bound: Any) -> None:
    with pytest.raises(ConfigError, match="invalid value"):
        issue_token(ROOT, audience=BOB.did, scopes=["tool:pay"],
                    constraints={"tool:pay": {"amount": {"max": bound}}}, now=NOW)


def test_eq_and_in_compare_types_strictly() -> None:
    token = issue_token(ROOT, audience=BOB.did, scopes=["tool:send"], now=NOW, constraints={
        "tool:send": {"to": {"in": ["alice@corp.example"]}, "n": {"eq": 1}}})
    v = _verify(token.encode())
    assert v.permits("send", {"to": "alice@corp.example", "n": 1.0}) is None
    assert v.permits("send", {"to": "\u0430lice@corp.example", "n": 1}) is not None  # Cyrillic a
    assert v.permits("send", {"to": "ALICE@corp.example", "n": 1}) is not None
    assert v.permits("send", {"to": "alice@corp.example", "n": True}) is not None
    assert v.permits("send", {"to": ["alice@corp.example"], "n": 1}) is not None
    assert v.permits("send", {"n": 1}) is not None  # a constrained argument must be present


@pytest.mark.parametrize("scope", ["tool:\u0455end_email", "tool:Send_email", "tool:send email",
                                   "tool:read_*_x", "tool:*x", "tool:", "*", "tool", ":x",
                                   "tool:send\u200bemail", "tool:\uff53end"])
def test_look_alike_and_malformed_scopes_are_refused(scope: str) -> None:
    with pytest.raises(ConfigError, match="invalid scope"):
        issue_token(ROOT, audience=BOB.did, scopes=[scope], now=NOW)
    with pytest.raises(TokenError, match="malformed"):  # nor accepted when signed by the root
        _verify(_encode(_link(ROOT, BOB.did, None, scopes=[scope])))


def test_look_alike_tool_names_do_not_reach_a_granted_scope() -> None:
    v = _verify(issue_token(ROOT, audience=BOB.did, scopes=["tool:send_email"],
                            now=NOW).encode())
    assert v.permits("\u0455end_email", {}) is not None  # Cyrillic dze: an invalid name
    assert v.permits("send_emai\u217c", {}) is None  # Roman numeral fifty: NFKC "l", same tool
    assert v.permits("send_email_all", {}) is not None


def test_glob_scopes_narrow_by_prefix_only() -> None:
    parent = issue_token(ROOT, audience=ALICE.did, scopes=["tool:read_*"], now=NOW)
    child = delegate_token(parent, ALICE, audience=BOB.did, scopes=["tool:read_secret*"],
                           now=NOW)
    v = _verify(child.encode())
    assert v.permits("read_secret_keys", {}) is None
    assert v.permits("read_public", {}) is not None
    for wider in (["tool:read*"], ["tool:*"], ["tool:rea*"], ["tool:read_"], ["tool:write_x"]):
        if wider == ["tool:read_"]:  # exact name under the glob: allowed, it is narrower
            delegate_token(parent, ALICE, audience=BOB.did, scopes=wider, now=NOW)
            continue
        with pytest.raises(ConfigError, match="widen"):
            delegate_token(parent, ALICE, audience=BOB.did, scopes=wider, now=NOW)
        forged = _link(ALICE, BOB.did, parent.id, scopes=wider)
        with pytest.raises(TokenError) as err:
            _verify(_encode(parent.links[0], forged))
        assert err.value.reason == "widened"


def test_constraint_on_a_glob_binds_every_narrower_delegation() -> None:
    parent = issue_token(ROOT, audience=ALICE.did, scopes=["tool:read_*"], now=NOW,
                         constraints={"tool:read_*": {"path": {"in": ["/pub"]}}})
    dropped = _link(ALICE, BOB.did, parent.id, scopes=["tool:read_secret"],
                    cons={"tool:read_secret": {"path": {"in": ["/pub", "/etc"]}}})
    with pytest.raises(TokenError, match="dropped"):
        _verify(_encode(parent.links[0], dropped))
    kept = delegate_token(parent, ALICE, audience=BOB.did, scopes=["tool:read_secret"], now=NOW)
    v = _verify(kept.encode())
    assert v.permits("read_secret", {"path": "/pub"}) is None
    assert v.permits("read_secret", {"path": "/etc"}) is not None


@pytest.mark.parametrize("mangle", [
    lambda raw: raw.replace(b'"v":1', b'"v":1,"v":1', 1),  # duplicate key
    lambda raw: raw.replace(b'"aud":', b'"aud":"x","aud":', 1),  # duplicate, first one differs
    lambda raw: raw.replace(b",", b", ", 1),  # white space
    lambda raw: raw.replace(b'"cons":{}', b'"cons":{ }', 1),
    lambda raw: raw.replace(b'"v":1', b'"v":1.0', 1),
    lambda raw: raw.replace(b'"v":1', b'"v":"1"', 1),
    lambda raw: b"[" + raw + b"]",  # nested list
    lambda raw: raw + b" ",
])
def test_non_canonical_json_is_malformed(mangle: Any) -> None:
    token = issue_token(ROOT, audience=BOB.did, scopes=["tool:x"], now=NOW)
    raw = canonical_json(list(token.links))
    with pytest.raises(TokenError) as err:
        _verify(PREFIX + b64e(mangle(raw)), audience={BOB.did})
    assert err.value.reason in ("malformed", "signature", "too_deep")


def test_encoding_confusion_is_refused() -> None:
    text = issue_token(ROOT, audience=BOB.did, scopes=["tool:x"], now=NOW).encode()
    raw = canonical_json(list(issue_token(ROOT, audience=BOB.did, scopes=["tool:x"],
                                          now=NOW).links))
    variants = [
        PREFIX + base64.b64encode(raw).decode(),  # standard alphabet and padding
        PREFIX + base64.urlsafe_b64encode(raw).decode() + "=" * 0 + "==",
        "BT1." + text[4:], "bt2." + text[4:], text + "A", text[:-1],
        PREFIX + b64e(b"\xef\xbb\xbf" + raw),  # UTF-8 BOM
        PREFIX + "A" * (64 * 1024),  # oversized
        PREFIX + b64e(b"[" * 5000 + b"]" * 5000),  # deeply nested
    ]
    for bad in variants:
        with pytest.raises(TokenError) as err:
            _verify(bad)
        assert err.value.reason in ("malformed", "signature"), bad[:40]


def test_signature_by_another_algorithm_or_key_type_is_refused() -> None:
    root = _link(ROOT, BOB.did, None)
    for iss in ("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",  # secp256k1
                "did:web:example.com", ROOT.did + "x", ROOT.did.replace("did:key:", "did:KEY:")):
        forged = {**root, "iss": iss}
        with pytest.raises(TokenError) as err:
            verify_token(_encode(forged), roots={iss}, now=NOW)
        assert err.value.reason == "signature"
