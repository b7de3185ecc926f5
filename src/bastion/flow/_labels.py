"""Helpers of ``Provenance`` over label sets and the text of one value: the labels of two values
under one name (``merged``), the text around a value's identifiers (``text_around``), and what an
argument name that is code looks like (``code_name``)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from bastion.flow._hayparts import SELECTED, TRUSTED, UNKNOWN, UNTRUSTED
from bastion.flow._values import URL, canonical, compact

_SEPARATORS = re.compile(r"[\s,;]+")

_NOT_WORD = re.compile(r"[\w]")  # what is left of a text without its letters and digits


def text_around(leaf: str, ids: frozenset[str]) -> str:
    """``_around``, remembered for short values (one decision asks for the same ones)."""
    return _rest_memo(leaf, ids) if len(leaf) <= 2_048 else _around(leaf, ids)


def _around(leaf: str, ids: frozenset[str]) -> str:
    """The canonical text of ``leaf`` outside its identifiers (punctuation included: a
    ``../../`` before a typed file name is not nothing), or ``""`` when only white space and
    list separators (``,`` ``;``) remain, or only the spacing of a grouped identifier (an
    IBAN typed in blocks of four)."""
    rest = canonical(leaf)
    values = sorted((a.partition(":")[2] for a in ids), key=len, reverse=True)
    for value in values:
        if value:
            rest = rest.replace(value, " ")
    rest = _SEPARATORS.sub(" ", rest).strip()
    if not rest:
        return ""
    squeezed = compact(rest)
    for value in values:
        piece = compact(value)
        if piece:
            squeezed = squeezed.replace(piece, "", 1)
    if not squeezed and not _NOT_WORD.sub("", rest.replace(" ", "")):
        return ""  # a grouped identifier, spaced or dashed
    return rest


_rest_memo = functools.lru_cache(maxsize=1_024)(_around)


def merged(a: list[str], b: list[str]) -> list[str]:
    """The labels of two values under one name, as ``labels_of`` would give the pair."""
    out = set(a) | set(b)
    if UNTRUSTED in out or UNKNOWN in out:
        out.discard(TRUSTED)
    if UNTRUSTED in out:
        out.discard(UNKNOWN)
    if SELECTED not in a or SELECTED not in b:
        out.discard(SELECTED)
    return sorted(out)


# top-level domains of three or more letters that a sentence could start with, or that are common
# enough for a typed host to end in: a cut before one is a cut of the host, not a run-on sentence
_TLDS = frozenset({
    "com", "net", "org", "edu", "gov", "mil", "int", "info", "biz", "name", "pro", "aero", "coop",
    "museum", "mobi", "asia", "tel", "travel", "jobs", "cat", "post", "app", "dev", "page",
    "cloud", "online", "site", "tech", "store", "shop", "blog", "xyz", "top", "club", "live",
    "news", "email", "group", "company", "bank", "law", "one", "new", "now", "best", "life",
    "work", "world", "today", "you", "win", "fun", "care", "art", "design", "media", "social",
    "network", "agency", "money", "pay", "finance", "capital", "digital", "solutions", "services",
    "ltd", "inc", "llc", "gmbh", "corp", "health", "shopping", "market", "house", "city",
    "support", "systems", "global", "zone",
})


def cut_typed(hay: str, kind: str, address: str) -> bool:
    """``hay`` (trusted text) holds ``address`` from where a token starts, followed by what
    only ends an address, not changes it: for a URL, its path, query or fragment going on
    (``https://example.com/`` typed, ``https://example.com`` passed); for any address, a dot
    and a word of three or more letters that is no common top-level domain, then no more of an
    address (``www.our-company.com.They sent…``: a sentence run on without a space). A cut off
    the start ("smith@gmail.com" out of "anna.smith@gmail.com") or before a top-level label
    ("shop.example" out of "shop.example.com", "shop.com" out of "shop.com.au") is another
    address."""
    if address not in hay:
        return False
    spans = [(m.start(), m.end()) for m in URL.finditer(hay)] if "/" in hay else []
    for m in re.finditer(re.escape(address), hay):
        if not _starts_typed(hay, m.start(), kind, spans):
            continue
        rest = hay[m.end():m.end() + 80]
        if kind == "url" and rest[:1] in ("/", "?", "#") and rest:
            return True
        run_on = _RUN_ON.match(rest)
        if run_on is not None and run_on.group(1) not in _TLDS:
            return True
    return False


_RUN_ON = re.compile(r"\.([^\W\d_]{3,})(?![\w.@\-])")
_ADDRESS_CHARS = frozenset(".+-@/:_")


def _starts_typed(hay: str, pos: int, kind: str, spans: list[tuple[int, int]]) -> bool:
    """An address found at ``pos`` of ``hay`` starts where the user began one: not inside a
    URL they typed (its query, path or fragment: "?next=https://evil.example" is part of the
    URL, whatever separates them), except where that URL's host starts (after ``://``, or after
    ``user@`` in its authority); elsewhere not right after a letter, digit or address character,
    except a host after the ``@`` of an e-mail address."""
    for start, end in spans:
        if start < pos < end:
            if kind == "email":
                return False
            authority = hay.find("://", start, end)
            if authority < 0 or any(c in hay[authority + 3:pos] for c in "/?#"):
                return False
            return pos == authority + 3 or hay[pos - 1] == "@"
        if end < pos <= end + 8 and not any(c.isspace() or c == "\x00" or c.isalnum()
                                            for c in hay[end:pos]):
            return False  # right after a typed URL and marks it ends at ("…?next=%22%3Chttps:")
    if pos == 0:
        return True
    before = hay[pos - 1]
    if not (before.isalnum() or before in _ADDRESS_CHARS):
        return True
    return kind != "email" and before == "@" and pos >= 2 and (
        hay[pos - 2].isalnum() or hay[pos - 2] in "._+-'")


_LONG_DIGITS = re.compile(r"\d{4}")


def code_name(name: str) -> bool:
    """``name`` is an argument name as code writes one (``to``, ``address_line1``,
    ``empfänger``, a position ``0``-``999``), not data passed as a keyword (an IBAN, a key,
    ``sk-live-…``): an identifier shorter than 24 characters without a run of four digits."""
    if name.isdigit():
        return len(name) <= 3
    return name.isidentifier() and len(name) < 24 and _LONG_DIGITS.search(name) is None


def one_reading(ids: frozenset[str], typed: Callable[[str], bool]) -> frozenset[str]:
    """``ids`` with one reading of an IBAN written with a word after its last group (both
    "be68…7034as" and "be68…7034" are read): the one the user typed, if either; else both."""
    ibans = [a for a in ids if a.startswith("iban:")]
    if len(ibans) < 2:
        return ids
    out = set(ids)
    for long in ibans:
        for short in ibans:
            rest = long[len(short):]  # the word after its last group ("as", "now")
            if short != long and long.startswith(short) and rest.isalpha() and len(rest) <= 4:
                if typed(long):
                    out.discard(short)
                elif typed(short):
                    out.discard(long)
    return frozenset(out)
