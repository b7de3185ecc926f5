"""A seventh adversarial review of ``bastion.flow``: commits 9e46970 and 475b55d.

Scope: ``Haystacks._sensitive`` (windows), ``_remember_value`` (``MAX_RECORDED``),
``labels_of_args`` under ``SCAN_BUDGET``, ``_rest``/``_text_around``, ``_words`` (the compact
shortcut), ``_leaf`` (unplaced labels), ``_new_handle``/``has_handle``, ``Kernel._finish`` /
``_redact_released`` and ``_mask_pattern``, with ``policies/flow-default.yaml``.

The tests under "findings" are the review's nine findings: eight fixed, and one case of the sixth
(an IBAN split at arbitrary points inside a sentence) still a strict xfail, listed in docs/flow.md
"Limits". The others are attacks the code already stopped.
"""

from __future__ import annotations

import random
import string
import time
from pathlib import Path
from typing import Any

import pytest
from flow_support import CATALOG, PACK, act, call_tool

import bastion
from bastion.flow import Provenance
from bastion.flow._haystacks import MAX_RECORDED, MIN_FRAGMENT
from bastion.flow._results import HANDLE, _new_handle, has_handle
from bastion.flow._values import MAX_TEXT, compact, identifiers

CAT = CATALOG + """\
  read_file: {class: read, side_effects: false, result: {handling: quarantine}}
  read_docs: {class: read, side_effects: false, result: {integrity: trusted}}
  directory: {class: read, side_effects: false, result: {integrity: trusted}}
  post_email: {class: egress, sinks: [to], content: [body]}
  save_note: {class: write, sinks: [path], content: [text]}
"""
IBAN = "GB29NWBK60161331926819"  # the attacker's account, only in untrusted data
USER_IBAN = "DE89370400440532013000"
KEY = "sk-live-9f8e7d6c5b4a39281706"
BOB = "bob@corp.example"
UNTRUSTED = ("untrusted", "internal", "tool:read_inbox")
TRUSTED_TOOL = ("trusted", "internal", "tool:directory")
SECRET = ("trusted", "secret", "tool:read_secrets")
CARD_RULE = (
    "  - id: mask-cards\n    stage: pre_tool\n    tools: [post_email]\n"
    "    effect: redact\n    redact_pattern: '\\b\\d(?:[ -]?\\d){12,15}\\b'\n")
SSN_RULES = (
    "  - id: mask-ssn-output\n    stage: output\n    effect: redact\n"
    "    redact_pattern: '\\d{3}-\\d{2}-\\d{4}'\n"
    "  - id: mask-ssn-input\n    stage: input\n    effect: redact\n"
    "    redact_pattern: '\\d{3}-\\d{2}-\\d{4}'\n")


@pytest.fixture
def k() -> Any:
    with bastion.Kernel.from_policy(PACK, catalog=CAT) as kernel:
        yield kernel


def _word(i: int, n: int = 5) -> str:
    out = ""
    for _ in range(n):
        out += string.ascii_lowercase[i % 26]
        i //= 26
    return out


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def _flood(k: bastion.Kernel, tool: str, results: int) -> None:
    """Push the session's remembered values out: ``results`` results of 4,096 distinct texts."""
    for j in range(results):
        call_tool(k, tool, [f"page {j} entry {i}" for i in range(4_096)])


# == findings =====================================================================================
# -- 1. deferred redaction at stages that release nothing -----------------------------------------
@pytest.mark.parametrize("stage", ["output", "input"])
def test_a_fake_handle_does_not_switch_off_redaction_outside_pre_tool(stage: str) -> None:
    with bastion.Kernel.from_text(Path(PACK).read_text() + SSN_RULES, catalog=CAT) as kernel:
        plain = kernel.evaluate(act(stage, args={"text": "the SSN is 123-45-6789"}))
        assert plain.redacted and "123-45-6789" not in str(plain.args)  # control
        d = kernel.evaluate(act(stage, args={
            "text": "the SSN is 123-45-6789 (ref bastion-q-0123456789abcdef)"}))
        assert d.allowed and d.redacted
        assert "123-45-6789" not in str(d.args)


# -- 2. the user's number switches unplaced labels off ---------------------------------------------
def test_an_evicted_address_beside_a_typed_number_is_still_held(k: bastion.Kernel) -> None:
    k.evaluate(act("input", args={"text": "summarise my inbox"}))
    call_tool(k, "read_inbox", f"Our bank changed, the new account is {IBAN}")
    call_tool(k, "read_inbox", "; ".join(f"item {i}" for i in range(100_000, 105_000)))
    assert k.provenance("s1").evicted > 0 and "untrusted" in k.provenance("s1").unplaced
    k.evaluate(act("input", args={"text": f"e-mail {BOB} that the 1200 rent goes to the new "
                                          "account"}))
    held = k.evaluate(act("pre_tool", "post_email", args={
        "to": BOB, "body": f"The rent now goes to {IBAN}"}))
    assert held.effect == "require_approval"  # control: without the typed number
    d = k.evaluate(act("pre_tool", "post_email", args={
        "to": BOB, "body": f"The 1200 rent now goes to {IBAN}"}))
    assert d.effect == "require_approval"


def test_an_evicted_secret_beside_a_typed_number_is_still_secret(k: bastion.Kernel) -> None:
    k.evaluate(act("input", args={"text": "get my api key"}))
    call_tool(k, "read_secrets", f"api key: {KEY}")
    _flood(k, "read_docs", 2)  # trusted pages: the session stays clean
    assert "secret" in k.provenance("s1").unplaced
    k.evaluate(act("input", args={"text": f"e-mail {BOB} about invoice 1200"}))
    denied = k.evaluate(act("pre_tool", "post_email", args={"to": BOB, "body": f"key {KEY}"}))
    assert denied.effect == "deny"  # control
    d = k.evaluate(act("pre_tool", "post_email", args={
        "to": BOB, "body": f"invoice 1200, key {KEY}"}))
    assert d.effect == "deny"


# -- 3. an excerpt crossing two pieces, too short for windows --------------------------------------
def _padded_table(length: int, seed: int = 1) -> str:
    """A secret table with short cells and wide padding (letters only, so no number in it
    carries the label instead): a quarter of its characters are significant."""
    rnd = random.Random(seed)
    cells = []
    while len(cells) * 8 < length:
        cells.append(f"| {''.join(rnd.choices(string.ascii_lowercase, k=2))}    ")
    return "".join(cells)


def test_a_sparse_excerpt_crossing_two_pieces_is_secret(k: bastion.Kernel) -> None:
    doc = _padded_table(140_000)
    k.evaluate(act("input", args={"text": f"e-mail {BOB} the summary"}))
    call_tool(k, "read_secrets", doc)
    inside = doc[1_000:2_800]
    assert "secret" in k.provenance("s1").labels_of(inside)  # control: inside one piece
    step = MAX_TEXT - 1_024
    excerpt = doc[step - 400:step + 1_400]  # crosses the end of the first piece
    assert len(compact(excerpt)) <= 512
    assert "secret" in k.provenance("s1").labels_of(excerpt)
    d = k.evaluate(act("pre_tool", "send_email", args={"to": BOB, "body": excerpt}))
    assert d.effect == "deny"


# -- 4. redaction of sets ------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["released", "direct"])
def test_a_set_of_strings_is_redacted(how: str) -> None:
    with bastion.Kernel.from_text(Path(PACK).read_text() + CARD_RULE, catalog=CAT) as kernel:
        kernel.evaluate(act("input", args={"text": f"e-mail the customer file to {BOB}"}))
        cards = {"4111 1111 1111 1111"}
        if how == "released":
            m = HANDLE.search(call_tool(kernel, "read_file", cards).result)
            assert m is not None
            body: Any = m.group(0)
        else:
            body = cards
        d = kernel.evaluate(act("pre_tool", "post_email", args={"to": BOB, "body": body}))
        assert d.allowed and d.redacted
        assert "4111 1111" not in str(d.args)


# -- 5. the _words shortcut ------------------------------------------------------------------------
def test_a_short_name_stays_untrusted_when_a_trusted_text_shares_its_compact_form() -> None:
    p = Provenance()
    p.record_input("write to the new contact")
    p.record("Fred Smith", UNTRUSTED)
    assert "untrusted" in p.labels_of("Fred")  # control
    p.record("fredsmith", TRUSTED_TOOL)  # a trusted directory's user name
    assert p._word_in("untrusted_text", "fred")
    assert "untrusted" in p.labels_of("Fred")


# -- 6. an untrusted IBAN written with dashes inside a sentence ------------------------------------
# found: grouped with dashes inside a sentence, no identifier pattern matched the IBAN (fixed:
# dashes and dots between groups read as spaces); split at arbitrary points it is still missed
@pytest.mark.parametrize("body", [
    "Pay the rent to GB29-NWBK-6016-1331-9268-19 from now on",
    pytest.param("Pay the rent to GB29NWBK601 61331926819 from now on", marks=pytest.mark.xfail(
        strict=True, reason="MEDIUM, open (docs/flow.md 'Limits'): an IBAN split at arbitrary "
        "points inside a sentence matches no identifier pattern"))])
def test_a_dashed_untrusted_iban_inside_a_sentence_is_held(k: bastion.Kernel, body: str) -> None:
    k.evaluate(act("input", args={"text": f"e-mail {BOB} about the rent"}))
    call_tool(k, "read_inbox", f"Our bank changed, the new account is {IBAN}")
    alone = k.evaluate(act("pre_tool", "post_email", args={
        "to": BOB, "body": "GB29-NWBK-6016-1331-9268-19"}))
    assert alone.effect == "require_approval"  # control
    d = k.evaluate(act("pre_tool", "post_email", args={"to": BOB, "body": body}))
    assert d.effect == "require_approval"


# -- 7. cost ---------------------------------------------------------------------------------------
def test_a_log_of_two_megabytes_is_recorded_quickly(k: bastion.Kernel) -> None:
    rnd = random.Random(3)
    lines, size = [], 0
    while size < 2 << 20:
        line = f"req {rnd.randint(1, 10**6)} status ok took {rnd.randint(1, 999)} ms\n"
        lines.append(line)
        size += len(line)
    log = "".join(lines)[:2 << 20]
    assert len(log) <= MAX_RECORDED
    assert k.evaluate(act("pre_tool", "read_inbox", args={})).allowed
    took, d = _timed(k.evaluate, act("post_tool", "read_inbox", args={}, result=log))
    assert d.allowed
    assert took < 2.0, took  # linear: ~0.3 s here; a quadratic search took minutes


def test_a_decision_over_two_big_texts_stays_fast(k: bastion.Kernel) -> None:
    docs = " ".join(f"q{_word(i)}q" for i in range(600_000))[:4 << 20]
    k.evaluate(act("input", args={"text": f"e-mail {BOB} a summary"}))
    call_tool(k, "read_docs", docs)
    call_tool(k, "read_inbox", docs.replace("q", "z"))
    args = {"to": BOB, "body": [_word(j * 7_919, 4) for j in range(300)]}
    took, d = _timed(k.evaluate, act("pre_tool", "post_email", args=args))
    assert d.effect == "require_approval"
    assert took < 2.0, took  # linear: ~0.3 s here; a quadratic search took minutes


# == attacks already stopped =======================================================================
# -- has_handle's fast path ------------------------------------------------------------------------
class _Str(str):
    __slots__ = ()


def test_has_handle_sees_str_subclasses_and_keys() -> None:
    h = _new_handle()
    assert has_handle({"to": _Str(f"see {h}")})
    assert has_handle({_Str(h): "x"})
    assert has_handle({h: 1})
    assert has_handle({"a": 1, "b": [h]})
    assert has_handle({"a": 1, (h, 2): "x"})  # a tuple key
    assert not has_handle({"a": "bastion-q-not-a-handle", "b": 2})


def test_a_handle_in_a_str_subclass_or_a_key_is_released_and_redacted() -> None:
    with bastion.Kernel.from_text(Path(PACK).read_text() + CARD_RULE, catalog=CAT) as kernel:
        kernel.evaluate(act("input", args={"text": f"e-mail the customer file to {BOB}"}))
        for shape in ("subclass", "key"):
            m = HANDLE.search(call_tool(kernel, "read_file", "card 4111 1111 1111 1111").result)
            assert m is not None
            body: Any = _Str(f"see {m.group(0)}") if shape == "subclass" else {m.group(0): "x"}
            d = kernel.evaluate(act("pre_tool", "post_email", args={"to": BOB, "body": body}))
            assert d.allowed and d.redacted, shape
            assert "4111 1111" not in str(d.args) and m.group(0) not in str(d.args), shape


def test_fresh_handles_read_as_no_identifier() -> None:
    for _ in range(2_000):
        h = _new_handle()
        assert HANDLE.fullmatch(h) and not identifiers(h)
    assert identifiers("bastion-q-ff13c0f3b8cf612f")  # why they are redrawn


def test_a_handle_passed_as_content_is_not_an_untrusted_identifier(k: bastion.Kernel) -> None:
    k.evaluate(act("input", args={"text": f"e-mail the file to {BOB}"}))
    d = None
    for _ in range(20):
        m = HANDLE.search(call_tool(k, "read_file", "quarterly figures").result)
        assert m is not None
        d = k.evaluate(act("pre_tool", "post_email", args={"to": BOB, "body": m.group(0)}))
        assert d.allowed, d.reasons
    assert d is not None and d.args["body"] == "quarterly figures"


# -- the budget: labels kept, and the rest unscanned ----------------------------------------------
def test_arguments_labelled_before_the_budget_ran_out_keep_their_labels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.flow import _provenance

    p = Provenance()
    p.record_input(f"pay 1200 to {USER_IBAN}")
    p.record(f"new account {IBAN}, " + " ".join(_word(i) for i in range(2_000)), UNTRUSTED)
    monkeypatch.setattr(_provenance, "SCAN_BUDGET", 1)
    # the typed IBAN needs no search; the memo's first search runs out of budget
    out = p.labels_of_args({"recipient": USER_IBAN, "memo": "as agreed on the phone"})
    assert out["recipient"] == p.labels_of(USER_IBAN) and "trusted" in out["recipient"]
    assert out["memo"] == sorted(p._unscanned())
    assert {"untrusted", "untrusted_identifier"} <= set(out["memo"])


def test_overbudget_in_the_rebuild_unscans_every_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.flow import _provenance

    p = Provenance()
    p.record_input(f"pay 1200 to {USER_IBAN}")
    p.record(f"new account {IBAN}", UNTRUSTED)
    monkeypatch.setattr(_provenance, "SCAN_BUDGET", 1)
    # both arguments are typed whole (no search); the rebuild's first search runs out
    out = p.labels_of_args({"recipient": USER_IBAN, "amount": 1200})
    assert all("untrusted" in v and "trusted" not in v for v in out.values()), out


def test_a_call_cut_short_by_the_budget_is_held(monkeypatch: pytest.MonkeyPatch,
                                                k: bastion.Kernel) -> None:
    from bastion.flow import _provenance

    k.evaluate(act("input", args={"text": f"pay 1200 to {USER_IBAN}"}))
    call_tool(k, "read_inbox", f"new account {IBAN}")
    call = act("pre_tool", "send_money", args={"recipient": USER_IBAN, "amount": 1200,
                                                "memo": "rent for March"})
    assert k.evaluate(call).allowed  # control
    monkeypatch.setattr(_provenance, "SCAN_BUDGET", 1)
    args = {**call.args, "memo": "rent for April"}  # searched afresh, not remembered
    assert k.evaluate(call._replace(args=args)).effect == "require_approval"


def test_a_big_call_in_an_untrusted_session_is_held_not_allowed(k: bastion.Kernel) -> None:
    k.evaluate(act("input", args={"text": f"e-mail {BOB} a summary"}))
    docs = " ".join(f"z{_word(i)}z" for i in range(600_000))[:4 << 20]
    call_tool(k, "read_inbox", docs)
    # every piece passes the compact test, so the budget runs out: held, never allowed
    args = {"to": BOB, "body": [_word(j * 7_919, 4) for j in range(150)]}
    d = k.evaluate(act("pre_tool", "post_email", args=args))
    assert d.effect == "require_approval"


# -- MAX_RECORDED ----------------------------------------------------------------------------------
def test_a_value_past_max_recorded_is_untrusted() -> None:
    p = Provenance()
    p.record_input("pay the invoice")
    filler = " ".join(_word(i) for i in range(800_000))[:MAX_RECORDED]
    p.record([filler, f"pay to {IBAN}"], UNTRUSTED)
    assert "untrusted" in p.unplaced
    labels = p.labels_of(IBAN)
    assert "untrusted" in labels and "untrusted_identifier" in labels
    assert "trusted" not in p.labels_of(f"pay to {IBAN}")


def test_a_trusted_value_past_max_recorded_keeps_its_confidentiality() -> None:
    p = Provenance()
    p.record_input("read the vault")
    filler = " ".join(_word(i) for i in range(800_000))[:MAX_RECORDED]
    p.record([filler, f"key {KEY}"], SECRET)
    p.record("pay to the landlord", TRUSTED_TOOL)
    assert "secret" in p.labels_of(f"key {KEY}")
    assert "secret" in p.labels_of("pay to the landlord")  # a trusted value may hold it


# -- the text around typed identifiers -------------------------------------------------------------
@pytest.mark.parametrize("value", ["../../report.txt", "report.txt; rm -rf ~",
                                   f"{USER_IBAN}/../x", f"{BOB}?cc=evil@x.example"])
def test_text_around_typed_identifiers_is_not_trusted(value: str) -> None:
    p = Provenance()
    p.record_input(f"save report.txt and pay {USER_IBAN}, e-mail {BOB}")
    assert "trusted" not in p.labels_of(value)


@pytest.mark.parametrize("value", ["report.txt", "DE89 3704 0044 0532 0130 00",
                                   f"{BOB}, {USER_IBAN}", f"{BOB};{USER_IBAN}"])
def test_typed_identifiers_alone_stay_trusted(value: str) -> None:
    p = Provenance()
    p.record_input(f"save report.txt and pay {USER_IBAN}, e-mail {BOB}")
    p.record(f"from {BOB}: pay {USER_IBAN}, see report.txt", UNTRUSTED)
    assert "trusted" in p.labels_of(value)


def test_the_memo_of_the_rest_does_not_outlive_what_is_trusted() -> None:
    p = Provenance()
    p.record_input("save report.txt")
    assert "trusted" not in p.labels_of("old report.txt")  # memoised rest: "old"
    p.record_input("the old report.txt please")
    assert "trusted" in p.labels_of("old report.txt")
    q = Provenance()  # a fresh session: the memo holds text, never labels
    q.record_input("save report.txt")
    assert "trusted" not in q.labels_of("old report.txt")


# -- windows of long values ------------------------------------------------------------------------
@pytest.mark.parametrize(("start", "end"), [(64_000, 66_000), (63_900, 70_000),
                                            (128_000, 130_500)])
def test_a_dense_excerpt_crossing_pieces_is_secret(start: int, end: int) -> None:
    p = Provenance()
    doc = " ".join(_word(i * 31, 7) for i in range(30_000))
    p.record(doc, SECRET)
    excerpt = doc[start:end]
    assert len(compact(excerpt)) > 512
    assert "secret" in p.labels_of(excerpt)


def test_a_composed_text_quoting_a_secret_window_is_secret() -> None:
    p = Provenance()
    doc = " ".join(_word(i * 31, 7) for i in range(30_000))
    p.record(doc, SECRET)
    body = "As discussed: " + doc[64_000:66_500] + " -- regards"
    assert len(compact(body)) >= MIN_FRAGMENT
    assert "secret" in p.labels_of(body)


def test_argument_names_that_read_alike_share_their_labels() -> None:
    # found while probing: keys 1 and "1" are one name for a policy; the later one hid the other
    p = Provenance()
    p.record_input("pay 5 to bob")
    p.record(f"the new account is {IBAN}", ("untrusted", "internal", "tool:read_inbox"))
    for args in ({1: IBAN, "1": "bob"}, {"1": IBAN, 1: "bob"}):
        assert "untrusted" in p.labels_of_args(args)["1"]
        assert "trusted" not in p.labels_of_args(args)["1"]
