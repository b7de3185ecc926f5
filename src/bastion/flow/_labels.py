"""Helpers of ``Provenance`` over label sets and the text of one value: the labels of two values
under one name (``merged``), the text around a value's identifiers (``text_around``), and what an
argument name that is code looks like (``PARAMETER``)."""

from __future__ import annotations

import functools
import re

from bastion.flow._haystacks import TRUSTED, UNTRUSTED
from bastion.flow._split import SELECTED, UNKNOWN
from bastion.flow._values import canonical, compact

_SEPARATORS = re.compile(r"[\s,;]+")
PARAMETER = re.compile(r"[A-Za-z_]{1,64}")  # a name as code writes one: not data
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
