"""What a value is, for provenance: its canonical form, the identifiers inside it and the
scalars of a nested value. Pure functions, no state (``_provenance`` keeps what was seen).

* ``canonical``: percent-decoded, NFKC, format characters stripped, casefolded, white space
  collapsed; ``compact``: its letters and digits only.
* ``identifiers``: e-mail addresses, URLs and their hosts (any script, IDNA-spelt; IPv4
  literals), IBANs, dates, numbers and file names,
  each canonical and tagged by kind (``email:``, ``url:``, ``host:``, ``iban:``, ``date:``,
  ``num:``, ``file:``). Every pattern is bounded and anchored where a token starts, so matching
  stays linear in the text.
* ``scalars``: the leaves of a nested value (map keys too), at most ``MAX_LEAVES``.
"""

from __future__ import annotations

import contextlib
import functools
import re
import unicodedata
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from bastion._canon import strip_format
from bastion.flow._numbers import number, readings

MAX_TEXT = 65_536  # characters of one value that are remembered and searched
MAX_LEAVES = 4_096  # scalars taken from one nested value

_WS = re.compile(r"\s+")
_NOT_ALNUM = re.compile(r"[\W_]+")  # the complement of str.isalnum
# every run is bounded and starts where a token starts, so matching stays linear in the text
# (unbounded runs backtrack quadratically on a long run without the expected delimiter)
_EMAIL = re.compile(r"(?<![\w.+\-'])[\w.+\-']{1,64}@[\w\-]{1,63}(?:\.[\w\-]{1,63}){1,16}")
# a URL ends at white space, straight quotes, angle brackets, closing typographic quotes and the
# closing punctuation of CJK text, none of which a URL needs unescaped (and at a comma before
# text that is not ASCII: NFKC made a CJK comma one); opening marks and "*" stay in it, so a URL
# written inside another one's query is part of it, and _TRIM drops them at its end
URL = re.compile(r"(?:(?<![a-z0-9+.\-])[a-z][a-z0-9+.\-]{0,31}://|www\.)"
                 "(?:[^\\s\\x00<>\"'`,\u2019\u201d\u00bb\u203a\u3001\u3002\u300d\u300f\u3011"
                 "\uff09\uff0c\uff01\uff1f]|,(?=[!-~]))+")
_IBAN = re.compile(r"\b[a-z]{2}[0-9]{2}"
                   r"(?:[a-z0-9]{11,30}|(?: ?[a-z0-9]{4}){2,7}(?: ?[a-z0-9]{1,4})?)\b")
_DAY_FIRST = re.compile(r"(?<![\w.\-/])\d{1,2}([-/.])\d{1,2}\1\d{4}(?![\w]|[.\-/]\d)")
_DATE = re.compile(r"(?<![\w.])\d{4}([-/])\d{1,2}\1\d{1,2}"
                   r"(?:[t ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:z|[+-]\d{2}:?\d{2})?)?(?![\w])")
# a run of digits and the separators a number is written with; ``_readings`` says which numbers
# it is ("1,200.50", "1.200,50", "12,50", "5 000"; "12, 50" is two)
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[,_ ./\-]\d+)*(?![\w])")
_FILE = re.compile(r"(?<![\w\-./\\])[\w\-./\\]{0,255}[\w\-]\.[a-z0-9]{1,8}\b")
# host names in any script ("банк-оплата.рф"; a top-level label is letters) and IPv4 literals
_HOSTLIKE = re.compile(r"(?<![\w\-.])(?:[\w\-]{1,63}\.){1,16}"
                       r"(?:xn--[a-z0-9\-]{1,59}|[^\W\d_]{2,63})\b")
_IPV4 = re.compile(r"(?<![\w.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?!\w|\.[0-9])")
_TRIM = ".,;:!?)]}>'\"*\u2019\u201d\u00bb\u203a"
_TRIGGER = re.compile(r"[0-9@./:]")
_IBAN_MIN = 15  # the shortest IBAN (Norway)
_GROUP_MARK = re.compile(r"(?<=[a-z0-9])[-.](?=[a-z0-9])")


def canonical(text: str) -> str:
    """Percent-decoded (up to three layers), NFKC, format characters stripped, casefolded,
    white space collapsed to one space and trimmed. Short texts are memoised: recording a value
    canonicalises it for its identifiers, its whole form and its compact form."""
    if len(text) <= _MEMO_TEXT:
        return _canonical_memo(text)
    return _canonical(text)


_MEMO_TEXT = 2_048
# ideographic full stops are dots in hosts; the hyphens NFKC keeps are hyphens ("GB29‐NWBK‐…");
# en and em dashes are punctuation between words ("bob@corp.example—he"), so spaces
_DOTS = str.maketrans("\u3002\uff61\u2010\u2011\u2012\u2043\ufe63\u2212\u2013\u2014\u2015\ufe58",
                      "..------    ")
# invisible characters that are not format characters (Cf): the combining grapheme joiner,
# Hangul fillers, variation selectors, the soft hyphen's kin; a value cut by one is still itself
INVISIBLE = re.compile("[\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u3164"
                        "\ufe00-\ufe0f\uffa0\ufff0-\ufff8\U000e0000-\U000e0fff]")
_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})


def _canonical(text: str) -> str:
    decoded = text[:MAX_TEXT]
    if "%" not in decoded:
        return _fold(decoded)
    for _ in range(3):
        nxt = unquote(decoded)
        if nxt == decoded:
            break
        decoded = nxt
    return _fold(decoded)


def _fold(decoded: str) -> str:
    # the kernel's own datamark (U+02C6, ``_results.MARK``) stands for a space: text copied out
    # of a marked result with its marks still reads as what was marked
    folded = strip_format(unicodedata.normalize("NFKC", decoded.replace("\u02c6", " ")
                                                .translate(_DOTS)))
    if not folded.isascii():
        folded = INVISIBLE.sub("", folded)
    folded = folded.casefold()
    folded = strip_format(unicodedata.normalize("NFKC", folded))
    return _WS.sub(" ", folded).strip()


_canonical_memo = functools.lru_cache(maxsize=1_024)(_canonical)


def compact(text: Any) -> str:
    """The significant characters of ``canonical(text)``: letters and digits only, so a value
    split by spaces, dashes or dots still matches itself."""
    if not isinstance(text, str):
        text = number(_num_text(text)) or ""
    return _NOT_ALNUM.sub("", canonical(text))


def identifiers(value: Any) -> frozenset[str]:
    """Canonical identifiers inside a scalar, each tagged by kind: ``email:``, ``url:``,
    ``host:``, ``iban:``, ``date:`` (ISO-like, ``2022-04-01``), ``num:``, ``file:``. Numbers
    give ``num:`` only; booleans and ``None`` give nothing. A date is one identifier: its day
    and month are not numbers of their own."""
    if isinstance(value, bool) or value is None:
        return frozenset()
    if isinstance(value, int | float):
        n = number(_num_text(value))
        return frozenset({f"num:{n}"}) if n is not None else frozenset()
    if not isinstance(value, str):
        return frozenset()
    if len(value) <= _MEMO_TEXT:  # recurring values (recipients, ids) are found once
        return _identifiers_memo(value)
    return _identifiers(value)


def text_forms(text: str, *, ids: bool = True) -> tuple[frozenset[str], str | None, str]:
    """``identifiers`` (unless ``ids`` is false), ``whole_atom`` and ``compact`` of one text,
    canonicalised once (a long text costs its canonical form three times otherwise)."""
    if len(text) <= _MEMO_TEXT:
        return identifiers(text) if ids else frozenset(), whole_atom(text), compact(text)
    canon = _canonical(text)
    return (_identifiers_of(canon) if ids else frozenset(), f"text:{canon}" if canon else None,
            _NOT_ALNUM.sub("", canon))


def in_urls(text: str) -> frozenset[str]:
    """The e-mail addresses (and their hosts) that ``text`` holds only inside a URL
    ("…/login?next=x@evil.example"): part of that URL. What a user typed there is not an
    address they typed on its own, so trusted input does not remember them as such."""
    canon = canonical(text)
    if "@" not in canon or "/" not in canon:
        return frozenset()
    spans = [(m.start(), m.end()) for m in URL.finditer(canon)]
    inside: set[str] = set()
    rest = canon
    for m in _EMAIL.finditer(canon):
        if any(a < m.start() < b for a, b in spans):
            addr = m.group(0).strip(_TRIM)
            inside |= {f"email:{addr}", f"host:{_ascii_host(addr.rpartition('@')[2])}"}
            rest = rest[:m.start()] + " " * len(m.group(0)) + rest[m.end():]
    return frozenset(inside - _identifiers_of(rest)) if inside else frozenset()


def _identifiers(value: str) -> frozenset[str]:
    return _identifiers_of(canonical(value))


def _identifiers_of(text: str) -> frozenset[str]:
    """The identifiers of an already canonical text."""
    out: set[str] = set()
    if not _TRIGGER.search(text):  # no digit, '@', '.', '/' or ':': no identifier can match
        return frozenset()
    for m in _EMAIL.finditer(text):
        addr = m.group(0).strip(_TRIM)
        out.add(f"email:{addr}")
        out.add(f"host:{_ascii_host(addr.rpartition('@')[2])}")
    for m in URL.finditer(text):
        url = m.group(0).rstrip(_TRIM)
        out.add(f"url:{url}")
        try:
            netloc = urlsplit(url if "://" in url else "//" + url).hostname
        except ValueError:
            netloc = None
        if netloc:
            out.add(f"host:{_ascii_host(netloc.rstrip('.'))}")
    for m in _IBAN.finditer(text):
        for iban in _ibanreadings(m.group(0)):
            if len(iban) >= _IBAN_MIN:  # a UUID's last group ("db151b451e20") is no account
                out.add(f"iban:{iban}")
    if "-" in text or "." in text:  # an IBAN grouped with dashes or dots ("GB29-NWBK-6016-...")
        for m in _IBAN.finditer(_GROUP_MARK.sub(" ", text)):
            iban = m.group(0).replace(" ", "")
            if " " in m.group(0) and len(iban) >= _IBAN_MIN and _iban_checksum(iban):
                out.add(f"iban:{iban}")
    # what the patterns above matched is one identifier: no numbers or names from inside it
    text = _IPV4.sub(lambda m: _ipv4(m, out), _IBAN.sub(" ", URL.sub(" ", _EMAIL.sub(" ", text))))
    for m in _DATE.finditer(text):  # a date's day and month are not amounts
        out.add(f"date:{m.group(0)}")
    text = _DATE.sub(" ", text)
    for m in _DAY_FIRST.finditer(text):  # 15.06.2024, 06/15/2024, 15-06-2024: as written
        out.add(f"date:{m.group(0)}")
    text = _DAY_FIRST.sub(" ", text)
    for m in _HOSTLIKE.finditer(text):
        out.add(f"host:{_ascii_host(m.group(0))}")
    for m in _FILE.finditer(text):
        name = m.group(0).replace("\\", "/").rsplit("/", 1)[-1]
        if name and not name[0].isdigit():
            out.add(f"file:{name}")
    for m in _NUMBER.finditer(text):
        out.update(f"num:{n}" for n in readings(m.group(0)))
    return frozenset(out)


_identifiers_memo = functools.lru_cache(maxsize=1_024)(_identifiers)


def _ibanreadings(written: str) -> tuple[str, ...]:
    """An IBAN as written in groups, and, when its last group is letters and the IBAN without
    that group passes its checksum while the whole does not, the shorter one too: the last
    "group" may be the next word ("BE68 5390 0754 7034 as discussed"). Labelling takes the
    reading the user typed when there are two (``one_reading``)."""
    iban = written.replace(" ", "")
    groups = written.split(" ")
    if len(groups) < 3 or not groups[-1].isalpha() or _iban_checksum(iban):
        return (iban,)
    shorter = "".join(groups[:-1])
    return (iban, shorter) if _iban_checksum(shorter) else (iban,)


def _iban_checksum(iban: str) -> bool:
    """ISO 13616: the account moved behind its country and check digits, letters as 10-35,
    is 1 modulo 97."""
    moved = iban[4:] + iban[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _ipv4(m: re.Match[str], out: set[str]) -> str:
    """An IPv4 literal is a host (and blanked out); four numbers that are not one stay."""
    if all(int(part) <= 255 for part in m.group(0).split(".")):
        out.add(f"host:{m.group(0)}")
        return " "
    return m.group(0)


def _ascii_host(host: str) -> str:
    """A host name as DNS spells it (IDNA: "банк.рф" is "xn--80ab2al.xn--p1ai"), so either
    spelling is the same host; as written where it is no valid IDNA name."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def without_identifiers(text: str) -> str:
    """Canonical ``text`` with its e-mail addresses, URLs and host names blanked out: the words
    a person wrote, not the pieces of an address ("weekly" in ``news.example/weekly``)."""
    return _HOSTLIKE.sub(" ", URL.sub(" ", _EMAIL.sub(" ", text)))


def scalars(value: Any) -> list[Any]:
    """The scalars inside a nested value (map keys and values, list items), at most
    ``MAX_LEAVES``: a value used as a map key keeps its labels too."""
    return leaves(value)[0]


def leaves(value: Any) -> tuple[list[Any], bool]:
    """``scalars``, and whether the value had more than ``MAX_LEAVES`` of them (the rest were
    not taken). Bytes are decoded and any other object (a dataclass, an SDK model) is taken as
    its text, so nothing inside a value goes unseen."""
    if type(value) in _SCALAR_TYPES:
        return [value], False
    out: list[Any] = []
    stack = [value]
    visits = 0
    while stack:  # depth first, in order: a cut loses the last scalars, not the first
        item = stack.pop()
        visits += 1
        if visits > _MAX_VISITS:  # a list that holds itself, say: the rest is not examined
            return out, True
        if isinstance(item, Mapping):
            for k, v in reversed(list(item.items())):
                stack.append(v)
                stack.append(k)
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(reversed(list(item)))
        else:
            if len(out) == MAX_LEAVES:
                return out, True
            out.append(_leaf(item))
            if not isinstance(item, bytes | bytearray | memoryview) and \
                    type(item) not in _SCALAR_TYPES:
                stack.extend(reversed(object_fields(item)))  # what its text may not show
    return out, False


_MAX_VISITS = 4 * MAX_LEAVES


def object_fields(item: Any) -> list[Any]:
    """The field values of an object that is not a scalar, a map or a list: a dataclass's
    fields, a pydantic model's dump, its ``__dict__`` or ``__slots__`` (``[]`` when it has none
    or they cannot be read). Its text (``str``) may leave some out: a ``repr=False`` field, a
    summary ``__str__``."""
    if isinstance(item, type | str | int | float | bool) or item is None:
        return []
    params = getattr(type(item), "__dataclass_fields__", None)
    if isinstance(params, dict):
        return [getattr(item, name, None) for name in params]
    dump = getattr(item, "model_dump", None)
    if callable(dump):
        with contextlib.suppress(Exception):
            return [dump()]
    found = getattr(item, "__dict__", None)
    out: list[Any] = list(found.values()) if isinstance(found, dict) else []
    for cls in type(item).__mro__:
        names = getattr(cls, "__slots__", ())
        for name in (names,) if isinstance(names, str) else names:
            if name not in ("__dict__", "__weakref__"):
                with contextlib.suppress(Exception):
                    out.append(getattr(item, name))
    return out


def _leaf(item: Any) -> Any:
    if item is None or isinstance(item, str | bool | int | float):
        return item
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item).decode("utf-8", "replace")
    return str(item)


def whole_atom(value: Any) -> str | None:
    if isinstance(value, str):
        text = canonical(value)
        return f"text:{text}" if text else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        n = number(_num_text(value))
        return f"num:{n}" if n is not None else None
    return None


def _num_text(value: Any) -> str:
    """A number's text: an int exactly (``repr`` of an int subclass may not be digits)."""
    return str(int(value)) if isinstance(value, int) else repr(value)
