"""What a session remembers of the values it saw, with their labels, and the haystacks searched
for them.

Pure and in memory (no I/O, no clock). ``Haystacks`` is the store ``Provenance`` builds on
(``_provenance`` labels arguments with it); its contract:

1. Every scalar recorded, and each identifier inside it (``identifiers``, ``whole_atom``), is
   remembered as an *atom* with the labels it arrived with; every text, compacted, as well. A
   text longer than ``MAX_TEXT`` is remembered in overlapping pieces (at most ``MAX_CHUNKS``).
2. At most ``max_values`` atoms and ``max_values`` texts (oldest first out). What a bound drops
   (an eviction, a piece past ``MAX_CHUNKS``, a leaf past ``MAX_LEAVES``) is never silent: its
   labels join ``unplaced`` and evictions are counted in ``evicted``.
3. The haystacks (``_haystack``) are kept as parts, updated as values are remembered, relabelled
   and evicted, and joined when first asked for after a change; what one search found is
   remembered until the next change.
4. While a budget runs (``_budget``, ``SCAN_BUDGET`` for one labelling), every search counts the
   characters it reads and raises ``OverBudget`` past it, so the caller can fail closed.
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from bastion._canon import unicode_host
from bastion.flow._hayparts import (
    KINDS,
    TRUSTED,
    UNTRUSTED,
    USER,
    defanged,
    haystacks_of,
    piece_of,
)
from bastion.flow._values import (
    MAX_TEXT,
    canonical,
    compact,
    identifiers,
    in_urls,
    leaves,
    text_forms,
    whole_atom,
)

MIN_FRAGMENT = 6  # significant characters a piece needs before it counts as a fragment
_MIN_HOST = 4  # significant characters of an address looked up as written ("例子.中国")
MIN_QUOTE = 3  # significant characters a piece of trusted text needs to count as quoted
MIN_SECRET_WORD = 16  # a word this long shared with a secret text carries its labels
MIN_SECRET_RUN = 20  # and a run of whole words this long (significant characters)

_MAX_SCANS = 4_096
MAX_CHUNKS = 64  # pieces of MAX_TEXT characters remembered of one long text (4 MB)
_OVERLAP = 1_024  # characters the pieces of a long text share, so no identifier is cut
SCAN_BUDGET = 128 << 20  # characters of haystack one labelling may search (then: fails closed)
_REGEX_COST = 16  # a whole-word regex search, in characters of `in` search per character
_WINDOW = 256  # significant characters of a long value looked up at a time in sensitive texts
MAX_RECORDED = MAX_CHUNKS * MAX_TEXT  # characters of one result remembered (the rest: unplaced)


def _digits(value: Any) -> str:
    """The digits of an integer of ``MIN_FRAGMENT`` or more of them (``""`` otherwise)."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(abs(int(value)))
        return text if len(text) >= MIN_FRAGMENT else ""
    return ""


_WORD_ENDS = re.compile(r"[\s=:/?&#;,|]+")


class OverBudget(Exception):
    """Labelling the arguments would search more than ``SCAN_BUDGET`` characters."""


class Haystacks:
    """The remembered values of one session and the haystacks searched for them. Not
    thread-safe on its own: the kernel serialises access per session."""

    __slots__ = ("_atoms", "_budget", "_hay", "_joined", "_parts", "_scans", "evicted",
                 "max_values", "unplaced")

    def __init__(self, *, max_values: int):
        self.max_values = max_values
        self._atoms: OrderedDict[str, set[str]] = OrderedDict()  # atom -> labels it arrived with
        self._hay: OrderedDict[str, set[str]] = OrderedDict()  # compact text -> labels
        # haystack -> remembered key -> what the haystack holds of it; and joined, until a change
        self._parts: dict[str, dict[str, str]] = {k: {} for k in KINDS}
        self._joined: dict[str, str] = {}
        self._scans: dict[tuple[str, str], bool] = {}  # (haystack, text) -> found; per change
        self.evicted = 0
        # labels of data seen but not remembered (evicted, or past a size bound): any value
        # that is not the user's may have come from it, so such values carry these labels
        self.unplaced: set[str] = set()
        self._budget: int | None = None  # characters left to search, while labelling arguments

    # -- remembering ----------------------------------------------------------------------------
    def _remember_value(self, value: Any, labels: frozenset[str]) -> None:
        """Remember every scalar in ``value`` and the identifiers inside it with ``labels``;
        what was remembered of earlier searches no longer holds."""
        found, cut = leaves(value)
        if cut:  # values past MAX_LEAVES are not remembered
            self._unplace(labels)
        room = MAX_RECORDED
        atoms_left = self.max_values  # more would only evict this result's own atoms
        for n, leaf in enumerate(found):
            if isinstance(leaf, str) and len(leaf) > room:  # past what one result may fill
                self._unplace(labels)
                leaf = leaf[:room]
            for piece in self._pieces(leaf, labels):
                if isinstance(piece, str):
                    room -= len(piece)
                    if atoms_left <= 0:  # no room for its identifiers: not even looked for
                        self._unplace(labels)
                    ids, whole, text = text_forms(piece, ids=atoms_left > 0)
                    if TRUSTED in labels and ids:  # an address typed inside a URL is the URL's
                        ids -= in_urls(piece)
                else:  # a long number's digits are text too: a card number, grouped or split
                    ids, whole, text = identifiers(piece), whole_atom(piece), _digits(piece)
                atoms = set(ids)
                if whole is not None:
                    atoms.add(whole)
                if len(atoms) > atoms_left:  # the rest would push out what was just kept
                    self._unplace(labels)
                    atoms = set(itertools.islice(atoms, max(atoms_left, 0)))
                atoms_left -= len(atoms)
                for atom in atoms:
                    self._remember(self._atoms, atom, labels)
                if text:
                    self._remember(self._hay, text, labels)
            if room <= 0:
                if n < len(found) - 1:
                    self._unplace(labels)
                break
        self._scans.clear()

    def _pieces(self, leaf: Any, labels: frozenset[str]) -> list[Any]:
        """A leaf as remembered: a text longer than ``MAX_TEXT`` in overlapping pieces (at most
        ``MAX_CHUNKS``; what lies beyond is unplaced)."""
        if not isinstance(leaf, str) or len(leaf) <= MAX_TEXT:
            return [leaf]
        step = MAX_TEXT - _OVERLAP
        starts = range(0, len(leaf) - _OVERLAP, step)
        if len(starts) > MAX_CHUNKS:
            self._unplace(labels)
            starts = starts[:MAX_CHUNKS]
        return [leaf[i:i + MAX_TEXT] for i in starts]

    def _unplace(self, labels: Iterable[str]) -> None:
        """Data with ``labels`` was seen but is not remembered."""
        self.unplaced.update(x for x in labels if x not in (TRUSTED, USER) and ":" not in x)

    def _remember(self, store: OrderedDict[str, set[str]], key: str,
                  labels: frozenset[str]) -> None:
        """Remember ``key`` with ``labels`` in ``store`` and keep the haystacks' parts current:
        a key joins the haystacks its labels put it in and leaves them when it is relabelled
        into others or evicted."""
        hay = store is self._hay
        found = store.get(key)
        if found is None:
            store[key] = set(labels)
            self._move(key, (), haystacks_of(hay, key, labels))
            if len(store) > self.max_values:
                old, old_labels = store.popitem(last=False)
                self.evicted += 1
                self._unplace(old_labels)
                self._move(old, haystacks_of(hay, old, old_labels), ())
        else:
            if not labels <= found:
                before = haystacks_of(hay, key, found)
                found.update(labels)
                self._move(key, before, haystacks_of(hay, key, found))
            store.move_to_end(key)

    def _move(self, key: str, before: tuple[str, ...], after: tuple[str, ...]) -> None:
        if before == after:
            return
        for kind in before:
            if kind not in after:
                self._parts[kind].pop(key, None)
                self._joined.pop(kind, None)
        for kind in after:
            if kind not in before:
                self._parts[kind][key] = piece_of(kind, key)
                self._joined.pop(kind, None)

    # -- searching ------------------------------------------------------------------------------
    def _haystack(self, kind: str) -> str:
        """Remembered texts joined for substring search: ``trusted``, ``untrusted`` or
        ``sensitive`` (carrying a confidentiality label above ``internal``), compacted;
        ``trusted_text`` and ``untrusted_text``, canonical texts with their spaces and
        punctuation, for whole-word search; ``untrusted_ids``, the significant characters of
        untrusted-only address identifiers. Each is kept as parts, updated as values are
        remembered, relabelled and evicted, and joined when first asked for after a change."""
        joined = self._joined.get(kind)
        if joined is None:
            joined = self._joined[kind] = "\x00".join(self._parts[kind].values())
        return joined

    def _in(self, kind: str, text: str) -> bool:
        """``text in self._haystack(kind)``, remembered until the next change: one decision
        asks about the same piece several times, and a big session's haystack is long."""
        key = (kind, text)
        found = self._scans.get(key)
        if found is None:
            hay = self._haystack(kind)
            self._spend(len(hay))
            found = self._scans[key] = text in hay
            if len(self._scans) > _MAX_SCANS:
                self._scans.clear()
                self._scans[key] = found
        return found

    def _word_in(self, kind: str, canon: str) -> bool:
        """``canon`` is in the ``kind`` haystack as whole words; remembered like ``_in``."""
        if not self._in(kind, canon):
            return False
        key = (f"words:{kind}", canon)
        found = self._scans.get(key)
        if found is None:
            hay = self._haystack(kind)
            self._spend(_REGEX_COST * len(hay))  # a regex reads ~16x slower than `in`
            found = self._scans[key] = re.search(
                rf"(?<!\w){re.escape(canon)}(?!\w)", hay) is not None
        return found

    def _spend(self, chars: int) -> None:
        """Count ``chars`` of searching against the labelling's budget, if one is running."""
        if self._budget is not None:
            self._budget -= chars
            if self._budget < 0:
                raise OverBudget

    def _spend_walk(self, *kinds: str) -> None:
        """Count a walk over the remembered values of the ``kinds`` haystacks."""
        if self._budget is not None:
            self._spend(sum(len(self._haystack(k)) for k in kinds))

    # -- what remembered texts hold a piece -----------------------------------------------------
    def _identifier_piece(self, text: str) -> bool:
        """``text`` (significant characters) is a piece of an untrusted-only address identifier
        (``MIN_FRAGMENT`` or more characters) that no trusted text holds."""
        return (len(text) >= MIN_FRAGMENT and self._in("untrusted_ids", text)
                and not self._in(TRUSTED, text))

    def _identifier_labels(self, text: str) -> set[str]:
        """Labels of the untrusted-only address identifiers ``text`` is a piece of (their
        sources and confidentiality: a cut-down link keeps where it came from)."""
        self._spend_walk("untrusted_ids")
        found: set[str] = set()
        for key, piece in self._parts["untrusted_ids"].items():
            if text in piece:
                found |= self._atoms.get(key, set())
        return found

    def _address_in_text(self, kind: str, value: str) -> set[str] | None:
        """Labels of the untrusted texts that hold the address ``value`` (canonical, of
        ``kind``) where it was not recognised as one (no word boundary in CJK text, odd
        separators), unless trusted text holds it: an IBAN by its significant characters, any
        other address as written, its host in either IDNA spelling ("Node.js" is not "NodeJS")."""
        if kind == "iban":
            return self._fragment(compact(value))
        found: set[str] = set()
        for form in {v for host in {value, unicode_host(value)} for v in defanged(host)}:
            size = len(compact(form))
            if size < _MIN_HOST or not self._in("untrusted_text", form) \
                    or self._in("trusted_text", form):
                continue
            if " " in form and not self._word_in("untrusted_text", form):
                continue  # "github. com" is in "github. commit" only as a piece of a word
            if size < MIN_FRAGMENT and not self._ascii_bounded("untrusted_text", form):
                continue  # a short one ("例子.中国") only as itself, not inside "grab.io"
            self._spend_walk("untrusted_text")
            for key, labels in self._atoms.items():
                if key.startswith("text:") and TRUSTED not in labels and form in key:
                    found |= labels
        return found or None

    def _ascii_bounded(self, kind: str, text: str) -> bool:
        """``text`` is in the ``kind`` haystack with no ASCII letter or digit right before or
        after it (CJK text around it is fine)."""
        hay = self._haystack(kind)
        self._spend(_REGEX_COST * len(hay))
        return re.search(rf"(?<![a-z0-9]){re.escape(text)}(?![a-z0-9])", hay) is not None

    def _sensitive(self, text: str) -> set[str]:
        """Confidentiality labels (and sources) of remembered sensitive texts that ``text`` is a
        piece of or holds, whatever their integrity: a secret stays secret when trusted."""
        found: set[str] = set()
        keys = self._parts["sensitive"]  # the remembered sensitive texts
        if len(text) < MIN_FRAGMENT or not keys:
            return found
        inside = self._in("sensitive", text)
        piece = text
        width = max(MIN_SECRET_WORD, min(_WINDOW, len(text) // 2))
        if not inside and len(text) >= 2 * width:
            # an excerpt of a long text kept in overlapping pieces may cross from one piece to
            # the next: some window of it (half its length at most) then lies inside one piece
            for i in range(0, len(text) - width + 1, width):
                if self._in("sensitive", text[i:i + width]):
                    inside, piece = True, text[i:i + width]
                    break
        self._spend(len(self._haystack("sensitive")) + len(keys) * len(text))
        for key in keys:
            if (inside and piece in key) or (len(key) >= MIN_FRAGMENT and key in text):
                found |= self._hay[key] - {TRUSTED, UNTRUSTED, USER}
        return found

    def _sensitive_words(self, leaf: str) -> set[str]:
        """Labels of sensitive texts that share a long word, or a run of whole words of
        ``MIN_SECRET_RUN`` significant characters, with ``leaf``: a key, token, password or
        sentence copied into a longer message is still the secret."""
        found: set[str] = set()
        hay = self._haystack("sensitive")
        if not hay:
            return found
        # words end at white space and at the marks that glue a token to its key or a URL
        # ("token=ghp_…", "mailto:…", "?k=…")
        words = [w for w in (compact(x) for x in _WORD_ENDS.split(canonical(leaf))) if w]
        pieces = [w for w in words if len(w) >= MIN_SECRET_WORD]
        for i in range(len(words)):  # and runs of whole words: a sentence quoted from a secret
            run = ""
            for word in words[i:]:
                run += word
                if len(run) >= MIN_SECRET_RUN:
                    if run != words[i]:
                        pieces.append(run)
                    break
        for piece in pieces:
            if not self._in("sensitive", piece):
                continue
            self._spend(len(hay))
            for key in self._parts["sensitive"]:
                if piece in key:
                    found |= self._hay[key] - {TRUSTED, UNTRUSTED, USER}
        return found

    def _fragment(self, text: str) -> set[str] | None:
        """Labels of the untrusted values ``text`` is a piece of, unless trusted text holds it."""
        if len(text) < MIN_FRAGMENT or self._in(TRUSTED, text):
            return None
        if not self._in(UNTRUSTED, text):
            return None
        found: set[str] = set()
        self._spend_walk(UNTRUSTED)
        for key, labels in self._hay.items():
            if TRUSTED not in labels and text in key:
                found.update(labels)
        return found or None

    def _words(self, leaf: str) -> set[str] | None:
        """Labels of the untrusted texts that hold ``leaf`` as whole words: a name too short to
        be a fragment ("Fred") copied out of an untrusted text is untrusted, not unknown."""
        canon = canonical(leaf)
        text = compact(leaf)
        # no untrusted compact text holds it: then no untrusted text holds its words (and one
        # evicted from only one of the two stores is unplaced); that search is often done already
        if len(text) < MIN_QUOTE or (not self._in(UNTRUSTED, text)
                                     and not self._in(TRUSTED, text)) \
                or not self._word_in("untrusted_text", canon):
            return None
        found: set[str] = set()
        self._spend_walk("untrusted_text")
        for key, labels in self._atoms.items():
            if key.startswith("text:") and TRUSTED not in labels and canon in key:
                found |= labels
        return found or None
