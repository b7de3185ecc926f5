"""Numbers in text, for provenance: what number a run of digits and separators is, as the
user or a sender wrote it ("1,200.50", "12,50", "5 000", "030 1200 4500"). Pure functions."""

from __future__ import annotations

import re

_INTEGER = re.compile(r"[-+]?[0-9]{1,4300}")


def number(text: str) -> str | None:
    raw = text.replace(",", "").replace("_", "").replace(" ", "")
    if _INTEGER.fullmatch(raw):  # exact: account, card and snowflake ids exceed a float's 2**53
        return str(int(raw))
    try:
        value = float(raw)
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)


def readings(text: str) -> list[str]:
    """The numbers a run of digits and separators (``_NUMBER``) is, each as ``_number`` spells
    it. The last ``.`` or ``,`` is the decimal mark ("12,50" is twelve and a half, "1.200,50"
    twelve hundred and a half, "0.125" an eighth), except a lone ``,`` before three digits
    ("1,500": fifteen hundred) and a mark that repeats ("1,200,000"); what comes before it must
    be digits or one grouping of them ("1,200.50", "1 200,50"). Any other run is its digits
    read as one number ("+41 44 668 18 00", "15.06.2024"), as before, never one of its groups:
    a typed phone number or date does not make an amount equal to a group of it the user's.
    Two numbers joined by ``-`` or ``/`` are a range, a fraction or a split ("100-150",
    "50/50") and three or more a list ("120/80/45"): each is read on its own, never joined;
    unless they are a phone number (nine digits or more, spaces too, or a group that starts
    with 0 among three groups or seven digits: "555-123-4567", "030/2500", "+1 415 555-2500";
    not a day and month, "10/05"), which is its digits as one."""
    sign = text[0] if text[0] in "+-" else ""
    body = text[len(sign):]
    if body.isdigit():
        return [n] if (n := number(sign + body)) is not None else []
    joined = _JOINERS.split(body)
    digits = _NOT_DIGIT.sub("", body)
    leading_zero = any(part.startswith("0") for part in joined)
    if len(joined) > 1 and (len(digits) >= 9 or " " in body or (leading_zero and (
            len(joined) > 2 or len(digits) >= 7))):  # a phone number: "030/2500", not "10/05"
        return [n] if (n := number(sign + digits)) is not None else []
    if len(joined) == 2:
        first = readings(sign + joined[0]) if joined[0] else []
        return first + (readings(joined[1]) if joined[1] else [])
    if len(joined) > 2:
        return [n for part in joined if part for n in readings(part)]  # "120/80/45": a list
    cut = len(body) - 1 - _LAST_SEP.search(body[::-1]).start()  # type: ignore[union-attr]
    head, mark, tail = body[:cut], body[cut], body[cut + 1:]
    if mark not in ".," or mark in head or (
            mark == "," and head.isdigit() and len(tail) == 3 and head[0] != "0"
            and len(head) <= 3):
        head, mark, tail = body, "", ""  # no decimal mark
    if head.isdigit() or _grouping(head):
        n = number(f"{sign}{_NOT_DIGIT.sub('', head)}{f'.{tail}' if mark else ''}")
    else:  # no number as written (a phone number, "15.06.2024"): its digits as one, never a
        n = number(sign + _NOT_DIGIT.sub("", body))  # group of it (an amount equal to one)
    return [n] if n is not None else []


def _grouping(text: str) -> bool:
    """``text`` is digits grouped by one separator in threes ("1,200,000", "1.200", "5 000"),
    or with commas the Indian way ("1,50,000")."""
    seps = set(_NOT_DIGIT.findall(text))
    if len(seps) != 1:
        return False
    sep = seps.pop()
    groups = text.split(sep)
    if groups[0][0] == "0" or len(groups[0]) > 3 or any(len(g) != 3 for g in groups[1:]):
        return sep == "," and _INDIAN.fullmatch(text) is not None
    return True


_LAST_SEP = re.compile(r"\D")
_INDIAN = re.compile(r"[1-9]\d?(?:,\d{2})+,\d{3}")
_NOT_DIGIT = re.compile(r"\D+")
_JOINERS = re.compile(r"[-/]")
