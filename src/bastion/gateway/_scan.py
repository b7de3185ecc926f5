"""What the MCP gateway checks in a tool's definition before a model may see it (pure: no I/O).

* **poisoning** — every string of the name, title, description and input schema (keys,
  descriptions, enums, defaults, at any depth) is normalised (NFKC, casefold, format
  characters removed: ``bastion._canon.norm_text``, so zero-width padding cannot split a
  phrase) and matched against instructions a tool description never needs: "ignore previous
  instructions", "do not tell the user", ``<IMPORTANT>``-style tags, requests for secrets or
  key files. A description that names a tool of *another* upstream is flagged too (the
  "shadowing" attack: instructions aimed at how the model uses someone else's tool).
* **invisible characters** — format characters (zero-width, bidi controls, Unicode tag
  characters that smuggle ASCII), variation selectors and filler characters. Tag characters
  are decoded so the report shows the hidden text.
* **typosquatting** — two tools of different upstreams whose names differ but look alike:
  the same *skeleton* (NFKC, casefold, separators dropped, common confusables folded:
  Cyrillic and Greek look-alikes, ``0→o``, ``1/i→l``, ``rn→m``, ``vv→w``) or skeletons
  within a small edit distance (Damerau, transpositions count one): 2 when the shorter
  skeleton has at least 6 characters, 1 from 4, 0 below (short names are too close by chance).

These are heuristics that flag for a human: a flagged tool is hidden until approved (see
``bastion.gateway._pins``); they do not prove a clean tool safe.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bastion._canon import canonical_tool, norm_text

MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason to distrust a tool: ``kind`` (``instruction``, ``invisible``,
    ``tool_reference``, ``typosquat``, ``invalid_name``, ``invalid_schema``), ``where``
    (``description``, ``inputSchema.properties.path.description``...) and ``detail``."""

    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} in {self.where}: {self.detail}"


_INSTRUCTIONS = [(name, re.compile(rx, re.S)) for name, rx in (
    ("ignore previous instructions",
     r"\b(ignore|disregard|forget|override)\b.{0,30}\b(previous|prior|above|earlier|all|"
     r"other|system|original)\b.{0,20}\b(instructions?|prompts?|rules?|messages?|directions?|"
     r"guidelines?)\b"),
    ("hide from the user",
     r"\b(do ?n[o']?t|never|without)\b.{0,20}\b(tell|telling|inform|informing|mention|"
     r"mentioning|notify|notifying|alert|alerting|reveal|revealing|show|showing)\b.{0,20}\b"
     r"(the )?(user|human|operator)\b"),
    ("hide from the user", r"\b(user|human)\b.{0,20}\b(must|should|need) not\b.{0,20}\b"
                           r"(know|see|be told|notice|find out)\b"),
    ("hidden instruction tag",
     r"<\s*/?\s*(important|system|instructions?|secret|hidden|admin|assistant|"
     r"\|?im_start\|?)\b[^>]*>|\[\s*(system|important|instructions?)\s*\]"),
    ("sensitive file", r"(~/\.ssh|\bid_rsa\b|\bid_ed25519\b|/etc/passwd|/etc/shadow|"
                       r"\.aws/credentials|\bmcp\.json\b|claude_desktop_config)"),
    ("request for secrets",
     r"\b(send|upload|exfiltrate|forward|leak|copy|reveal)\b.{0,60}\b(passwords?|"
     r"credentials|api[ _-]?keys?|private keys?|secrets?|tokens?|system prompt)\b"),
    ("new instructions", r"\b(new|updated|real|actual) instructions\b|\byou are now\b"),
)]

#: invisible code points that are not Unicode format characters (those are all flagged)
_INVISIBLE_EXTRA = (
    range(0xFE00, 0xFE10),     # variation selectors
    range(0xE0100, 0xE01F0),   # variation selectors supplement
    range(0x115F, 0x1161),     # Hangul fillers
    range(0x3164, 0x3165),
    range(0xFFA0, 0xFFA1),
    range(0x2800, 0x2801),     # braille blank
)


def invisible(text: str) -> list[str]:
    """The invisible characters in ``text`` as ``U+XXXX`` (each distinct one once, in order)."""
    seen: dict[str, None] = {}
    for ch in text:
        cp = ord(ch)
        if unicodedata.category(ch) == "Cf" or any(cp in r for r in _INVISIBLE_EXTRA):
            seen.setdefault(f"U+{cp:04X}", None)
    return list(seen)


def tag_text(text: str) -> str:
    """The ASCII smuggled in Unicode tag characters (U+E0020..U+E007E), if any."""
    return "".join(chr(ord(ch) - 0xE0000) for ch in text if 0xE0020 <= ord(ch) <= 0xE007E)


def scan_tool(name: str, description: str | None, input_schema: Any, *, title: str | None = None,
              other_tools: Sequence[str] = ()) -> list[Finding]:
    """Every poisoning finding in one tool's definition. ``other_tools`` are the names of
    tools served by *other* upstreams (a description that names one is flagged)."""
    findings: list[Finding] = []
    if canonical_tool(name) is None:
        findings.append(Finding("invalid_name", "name", f"{name!r} is not a valid tool name"))
    fields: list[tuple[str, str]] = [("name", name)]
    if title:
        fields.append(("title", title))
    if description:
        fields.append(("description", description))
    fields.extend(_schema_strings(input_schema, "inputSchema", 0))
    others = [(o, re.compile(rf"(?<![a-z0-9_]){re.escape(c)}(?![a-z0-9_])"))
              for o in other_tools if (c := canonical_tool(o)) is not None and len(c) >= 4]
    for where, text in fields:
        if text is _TOO_DEEP:
            findings.append(Finding("invalid_schema", where, f"nested deeper than {MAX_DEPTH} "
                                                             "levels (not read past them)"))
            continue
        findings.extend(_scan_text(where, text, others))
    return findings


def _scan_text(where: str, text: str,
               others: list[tuple[str, re.Pattern[str]]]) -> Iterator[Finding]:
    hidden = invisible(text)
    if hidden:
        smuggled = tag_text(text)
        detail = f"invisible characters {', '.join(hidden[:8])}"
        yield Finding("invisible", where, detail + (f" (hidden text {smuggled[:80]!r})"
                                                    if smuggled else ""))
    normal = norm_text(text)
    for variant in dict.fromkeys((normal, norm_text(tag_text(text)), _as_read(text))):
        for label, rx in _INSTRUCTIONS:
            m = rx.search(variant)
            if m:
                yield Finding("instruction", where, f"{label}: {m.group(0)[:80]!r}")
                break
    latin = _latin(norm_text(text.translate(_LATIN_CAPITALS)))  # names keep their '_'
    for other, rx in others:
        if rx.search(normal) or rx.search(latin):
            yield Finding("tool_reference", where, f"mentions {other!r}, a tool of another "
                                                   "server")


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")
_APOSTROPHES = str.maketrans(dict.fromkeys(
    "\u2018\u2019\u201b\u02bc\u02bb\u02bd\u02b9\u2032\u00b4\u0060\uff07\ua78b\ua78c"
    "\u055a\u05f3", "'"))


def _as_read(text: str) -> str:
    """``text`` as a model reads it, every fold at once: look-alike capitals of other scripts
    as Latin ones (before casefolding turns Greek N into nu), words joined by camelCase apart,
    NFKC and casefold, combining marks dropped ("ïgnore"), look-alike small letters and small
    capitals as Latin ones, words joined by '_', '-' or '.' apart, blank space as one, and
    typographic apostrophes as ASCII."""
    # NFKC (fullwidth letters become ASCII) and the look-alike folds first, with case kept, so
    # camelCase is seen between the letters a model reads ("ignorеAll" with a Cyrillic е)
    cased = unicodedata.normalize("NFKC", text).translate(_LATIN_CAPITALS).translate(_LATIN)
    folded = norm_text(_CAMEL.sub(" ", cased))
    bare = "".join(ch for ch in unicodedata.normalize("NFD", folded)
                   if unicodedata.category(ch) != "Mn")
    latin = unicodedata.normalize("NFC", bare).translate(_LATIN).translate(_SMALL_CAPITALS)
    dashed = "".join("-" if unicodedata.category(ch) == "Pd" else ch for ch in latin)
    return _JOINERS.sub(" ", dashed).translate(_APOSTROPHES)


_JOINERS = re.compile(r"(?:[\s_]|(?<=\w)[-.\u00b7\u2027\u30fb](?=\w))+")
_SMALL_CAPITALS = str.maketrans({
    "ᴀ": "a", "ʙ": "b", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ꜰ": "f", "ɢ": "g", "ʜ": "h", "ɪ": "i",
    "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ɴ": "n", "ᴏ": "o", "ᴘ": "p", "ʀ": "r", "ꜱ": "s",
    "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ʏ": "y", "ᴢ": "z",
})


# Cyrillic and Greek letters that look like Latin ones (letters only: no digit folds)
_LATIN = str.maketrans({
    "а": "a", "в": "b", "с": "c", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "м": "m",
    "н": "h", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԝ": "w",
    "ӏ": "l", "ɡ": "g", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ѵ": "v", "ԁ": "d", "ɩ": "i",
})


# capital look-alikes, folded before casefolding would turn Greek N into nu ("v") and H into eta
_LATIN_CAPITALS = str.maketrans({
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N",
    "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "А": "A", "В": "B", "Е": "E", "К": "K",
    "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S",
    "І": "I", "Ј": "J", "Ԛ": "Q", "Ԝ": "W",
})


def _latin(text: str) -> str:
    return text.translate(_LATIN)


_TOO_DEEP = "\x00<schema nested too deeply>"


def _schema_strings(node: Any, where: str, depth: int) -> Iterator[tuple[str, str]]:
    if depth > MAX_DEPTH:  # flagged by scan_tool (a model would still read what is below)
        yield where, _TOO_DEEP
        return
    if isinstance(node, str):
        yield where, node
    elif isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}"
            if isinstance(key, str):
                yield path + " (key)", key
            yield from _schema_strings(value, path, depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _schema_strings(value, f"{where}[{i}]", depth + 1)


# -- typosquatting -------------------------------------------------------------------------
_CONFUSABLE = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "l", "ј": "j",
    "ѕ": "s", "ԁ": "d", "ɡ": "g", "һ": "h", "ӏ": "l", "в": "b", "к": "k", "м": "m", "т": "t",
    "н": "h", "α": "a", "β": "b", "ε": "e", "ι": "l", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "0": "o", "1": "l", "i": "l", "|": "l", "5": "s", "$": "s",
    "@": "a",
})
_SEPARATORS = re.compile(r"[\s_\-.:/]+")
_DIGRAPHS = (("rn", "m"), ("vv", "w"), ("cl", "d"))


def skeleton(name: str) -> str:
    """A name reduced to how it looks: NFKC, casefold, format characters and separators
    dropped, confusable letters and digits folded."""
    text = _SEPARATORS.sub("", norm_text(name)).translate(_CONFUSABLE)
    for pair, single in _DIGRAPHS:
        text = text.replace(pair, single)
    return text


def distance(a: str, b: str, limit: int = 3) -> int:
    """Optimal-string-alignment edit distance (a transposition counts one), capped at
    ``limit`` + 1 so long names cost little."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        if min(row) > limit:
            return limit + 1
        prev2, prev = prev, row
    return prev[-1]


def _threshold(shorter: int, max_distance: int) -> int:
    return min(max_distance, 2 if shorter >= 6 else 1 if shorter >= 4 else 0)


def typosquats(tools: Sequence[tuple[str, str]], *, max_distance: int = 2
               ) -> list[tuple[int, int, str]]:
    """Pairs of look-alike tools from different upstreams: ``tools`` are ``(upstream,
    name)``; returns ``(i, j, why)`` for each pair (``i < j``). Names that are equal after
    canonicalisation are not a squat (the gateway's namespaces keep them apart)."""
    keyed = [(up, canonical_tool(n) or norm_text(n), skeleton(n)) for up, n in tools]
    out: list[tuple[int, int, str]] = []
    for i, (up_i, canon_i, skel_i) in enumerate(keyed):
        for j in range(i + 1, len(keyed)):
            up_j, canon_j, skel_j = keyed[j]
            if up_i == up_j or canon_i == canon_j:
                continue
            if skel_i == skel_j:
                out.append((i, j, "names look the same"))
                continue
            limit = _threshold(min(len(skel_i), len(skel_j)), max_distance)
            if limit and (d := distance(skel_i, skel_j, limit)) <= limit:
                out.append((i, j, f"names differ by {d} edit{'s' if d > 1 else ''}"))
    return out
