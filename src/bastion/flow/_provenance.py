"""Value-level provenance: which labels the data an argument came from arrived with.

Pure and in memory (no I/O, no clock). The kernel feeds each session's ``Provenance`` with what
passes through it (see "Flow facts" in DESIGN.md):

1. ``input`` text (user and system messages) is recorded **trusted**, source ``user``.
2. ``post_tool`` results are recorded with the catalog's labels for the tool: integrity
   (``untrusted`` by default), confidentiality (``internal`` by default), source ``tool:NAME``.
3. At ``pre_tool`` every argument is labelled by ``labels_of``: the whole value and each
   identifier inside it (e-mail addresses, URLs and their hosts, IBANs, dates, numbers, file
   names),
   canonicalised by ``canonical`` so case, white space, zero-width characters, compatibility
   forms and percent-encoding cannot hide a value.

Invariants (the property tests hold the code to them):

* A value that arrived only from untrusted sources is never labelled ``trusted``: an argument is
  ``trusted`` only when the whole value, or every identifier in it, appeared in trusted input
  and nothing in it is untrusted-only.
* A value never seen is labelled ``unknown``; policies decide what that means. A value the
  trusted input holds (the whole value, one identifier typed by the user, or a quoted run of
  whole words) was seen: it is ``trusted`` even when untrusted data shows it too.
* Fragments count: a piece of an untrusted value (``MIN_FRAGMENT`` or more significant
  characters) is untrusted, and identifiers rebuilt from the pieces of several arguments label
  every piece (``labels_of_args``).
* An argument that holds an *address* identifier (e-mail address, URL, host, IBAN) that appeared
  only in untrusted data, or a piece of one (``MIN_FRAGMENT`` or more significant characters), is
  labelled ``untrusted_identifier`` as well as ``untrusted``: policies can let untrusted or
  composed *text* through as the payload of a call and still stop a link, address or account
  number that a third party chose. An identifier the user typed never gets this label.
* Memory is bounded: at most ``max_values`` remembered values per session (oldest first out);
  evictions are counted in ``evicted``, never silent. Session-level labels (``untrusted`` seen,
  confidentiality seen) are never evicted.
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from bastion.flow._records import RecordIndex
from bastion.flow._values import (
    MAX_TEXT,
    canonical,
    compact,
    identifiers,
    leaves,
    scalars,
    whole_atom,
    without_identifiers,
)

TRUSTED, UNTRUSTED, UNKNOWN = "trusted", "untrusted", "unknown"
UNTRUSTED_IDENTIFIER = "untrusted_identifier"
SELECTED = "selected"  # an untrusted value the user's own words picked out (see _selected)
MAX_TOOLS_SEEN = 1_024  # distinct tools kept beyond the history window (then: incomplete)
ADDRESS_KINDS = frozenset({"email", "url", "host", "iban"})  # identifiers that say where to go
USER = "user"
MIN_FRAGMENT = 6  # significant characters a piece needs before it counts as a fragment
MIN_QUOTE = 3  # significant characters a piece of trusted text needs to count as quoted
MIN_SECRET_WORD = 16  # a word this long shared with a secret text carries its labels
_PLAIN = frozenset({TRUSTED, UNTRUSTED, USER, "public", "internal"})

_MAX_SCANS = 4_096
MAX_CHUNKS = 64  # pieces of MAX_TEXT characters remembered of one long text (4 MB)
_OVERLAP = 1_024  # characters the pieces of a long text share, so no identifier is cut
SCAN_BUDGET = 64 << 20  # characters of haystack one labelling may search (then: fails closed)


class OverBudget(Exception):
    """Labelling the arguments would search more than ``SCAN_BUDGET`` characters."""

_HAY_KINDS = (TRUSTED, UNTRUSTED, "sensitive")  # haystacks of compact texts
_KINDS = (*_HAY_KINDS, "trusted_text", "untrusted_text", "untrusted_ids")


def _sensitive_labels(labels: set[str] | frozenset[str]) -> bool:
    """Labels above ``internal`` (a confidentiality such as ``secret``), sources aside."""
    extra = labels - _PLAIN
    return bool(extra) and not all(x.startswith("tool:") for x in extra)


def _kinds(hay: bool, key: str, labels: set[str] | frozenset[str]) -> tuple[str, ...]:
    """The haystacks a remembered key belongs to (``hay``: a compact text, else an atom)."""
    trusted = TRUSTED in labels
    if hay:
        first = TRUSTED if trusted else UNTRUSTED
        return (first, "sensitive") if _sensitive_labels(labels) else (first,)
    kind = key.partition(":")[0]
    if kind == "text":
        return ("trusted_text",) if trusted else ("untrusted_text",)
    if kind in ADDRESS_KINDS and not trusted:
        return ("untrusted_ids",)
    return ()


def _runs(flat: list[tuple[str, str]], absent: list[bool]) -> Iterator[list[tuple[str, str]]]:
    """Runs of two or more adjacent pieces, then every ordered pair, leaving out any that holds
    an ``absent`` piece."""
    n = len(flat)
    for i in range(n):
        if absent[i]:
            continue
        for j in range(i + 1, n):
            if absent[j]:
                break
            yield flat[i:j + 1]
    for x in range(n):
        for y in range(n):
            if x != y and not absent[x] and not absent[y]:
                yield [flat[x], flat[y]]


def _piece(kind: str, key: str) -> str:
    """What of a remembered key a haystack holds."""
    if kind in _HAY_KINDS:
        return key
    if kind == "untrusted_ids":
        return compact(key.partition(":")[2])
    return key[5:]  # "text:..." without its tag


class Provenance:
    """What one session has seen, and with which labels. Not thread-safe on its own: the
    kernel serialises access per session."""

    __slots__ = ("_atoms", "_budget", "_hay", "_joined", "_parts", "_scans", "_untrusted_seen",
                 "evicted", "history", "labels", "max_history", "max_values", "records",
                 "tools_seen", "unplaced")

    def __init__(self, *, max_values: int = 4_096, max_history: int = 64):
        self.max_values = max_values
        self.max_history = max_history
        self._atoms: OrderedDict[str, set[str]] = OrderedDict()  # atom -> labels it arrived with
        self._hay: OrderedDict[str, set[str]] = OrderedDict()  # compact text -> labels
        # haystack -> remembered key -> what the haystack holds of it; and joined, until a change
        self._parts: dict[str, dict[str, str]] = {k: {} for k in _KINDS}
        self._joined: dict[str, str] = {}
        self._scans: dict[tuple[str, str], bool] = {}  # (haystack, text) -> found; per change
        self._untrusted_seen = False  # anything not trusted was ever recorded
        self.records = RecordIndex()  # the records of untrusted results, for selection
        self.tools_seen: dict[str, None] = {}  # every tool called, in last-call order
        self.evicted = 0
        self.labels: set[str] = set()  # session level: integrity and confidentiality seen
        # labels of data seen but not remembered (evicted, or past a size bound): any value
        # that is not the user's may have come from it, so such values carry these labels
        self.unplaced: set[str] = set()
        self._budget: int | None = None  # characters left to search, while labelling arguments
        self.history: list[str] = []

    # -- recording ------------------------------------------------------------------------------
    def record(self, value: Any, labels: Iterable[str], keys: Iterable[str] = ()) -> None:
        """Remember every scalar in ``value`` and the identifiers inside it with ``labels``;
        for an untrusted result, also its records, whose ``keys`` fields can name one of them
        (see ``_selected``)."""
        labels = frozenset(labels)
        self.labels.update(x for x in labels if x != TRUSTED and ":" not in x and x != USER)
        if TRUSTED not in labels:
            self._untrusted_seen = True
        found, cut = leaves(value)
        if cut:  # values past MAX_LEAVES are not remembered
            self._unplace(labels)
        for leaf in found:
            for piece in self._pieces(leaf, labels):
                atoms = set(identifiers(piece))
                whole = whole_atom(piece)
                if whole is not None:
                    atoms.add(whole)
                for atom in atoms:
                    self._remember(self._atoms, atom, labels)
                if isinstance(piece, str):
                    text = compact(piece)
                    if text:
                        self._remember(self._hay, text, labels)
        if TRUSTED not in labels and keys:
            self.records.remember(value, frozenset(keys))
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

    def record_input(self, text: Any) -> None:
        self.record(text, (TRUSTED, USER))

    def record_result(self, tool: str, result: Any, integrity: str, confidentiality: str,
                      keys: Iterable[str] = ()) -> None:
        self.record(result, (integrity, confidentiality, f"tool:{tool}"), keys)

    def record_call(self, tool: str) -> None:
        self.history.append(tool)
        if len(self.history) > self.max_history:
            del self.history[0]
        if tool in self.tools_seen:  # kept in last-call order
            del self.tools_seen[tool]
            self.tools_seen[tool] = None
        elif len(self.tools_seen) < MAX_TOOLS_SEEN:
            self.tools_seen[tool] = None
        else:
            self.labels.add("incomplete")  # a tool called beyond what is kept

    def full_history(self) -> list[str]:
        """``history`` (the last ``max_history`` calls, oldest first), preceded by every other
        tool called earlier in the session, once each, in the order of their last calls: a
        call that left the window is still "in" the history (64 harmless calls cannot wash out
        a download), and the order of every tool's last call is exact; positions and counts in
        that prefix are not."""
        recent = set(self.history)
        return [t for t in self.tools_seen if t not in recent] + self.history

    def _remember(self, store: OrderedDict[str, set[str]], key: str,
                  labels: frozenset[str]) -> None:
        """Remember ``key`` with ``labels`` in ``store`` and keep the haystacks' parts current:
        a key joins the haystacks its labels put it in and leaves them when it is relabelled
        into others or evicted."""
        hay = store is self._hay
        found = store.get(key)
        if found is None:
            store[key] = set(labels)
            self._move(key, (), _kinds(hay, key, labels))
            if len(store) > self.max_values:
                old, old_labels = store.popitem(last=False)
                self.evicted += 1
                self._unplace(old_labels)
                self._move(old, _kinds(hay, old, old_labels), ())
        else:
            if not labels <= found:
                before = _kinds(hay, key, found)
                found.update(labels)
                self._move(key, before, _kinds(hay, key, found))
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
                self._parts[kind][key] = _piece(kind, key)
                self._joined.pop(kind, None)

    # -- asking ---------------------------------------------------------------------------------
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
            self._spend(len(hay))
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

    def _unscanned(self) -> set[str]:
        """The labels of a value too large to examine: whatever the session has seen that is not
        the user's (``unknown`` when that is nothing), so it can hide nothing."""
        out = (self.labels | self.unplaced) - {TRUSTED, USER}
        if UNTRUSTED in out or self._untrusted_seen:
            out |= {UNTRUSTED, UNTRUSTED_IDENTIFIER}
        return out or {UNKNOWN}

    def _identifier_piece(self, text: str) -> bool:
        """``text`` (significant characters) is a piece of an untrusted-only address identifier
        (``MIN_FRAGMENT`` or more characters) that no trusted text holds."""
        return (len(text) >= MIN_FRAGMENT and self._in("untrusted_ids", text)
                and not self._in(TRUSTED, text))

    def _sensitive(self, text: str) -> set[str]:
        """Confidentiality labels (and sources) of remembered sensitive texts that ``text`` is a
        piece of or holds, whatever their integrity: a secret stays secret when trusted."""
        found: set[str] = set()
        if len(text) < MIN_FRAGMENT or not self._haystack("sensitive"):
            return found
        inside = self._in("sensitive", text)
        self._spend_walk(TRUSTED, UNTRUSTED)
        for key, labels in self._hay.items():
            if (inside and text in key) or (len(key) >= MIN_FRAGMENT and key in text
                                             and labels - _PLAIN):
                found |= labels - {TRUSTED, UNTRUSTED, USER}
        return found

    def _sensitive_words(self, leaf: str) -> set[str]:
        """Labels of sensitive texts that share a long word with ``leaf``: a key, token or
        password copied into a longer message is still the secret."""
        found: set[str] = set()
        hay = self._haystack("sensitive")
        if not hay:
            return found
        for word in canonical(leaf).split(" "):
            word = compact(word)
            if len(word) < MIN_SECRET_WORD or not self._in("sensitive", word):
                continue
            self._spend_walk(TRUSTED, UNTRUSTED)
            for key, labels in self._hay.items():
                if word in key and labels - _PLAIN:
                    found |= labels - {TRUSTED, UNTRUSTED, USER}
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
        if len(compact(leaf)) < MIN_QUOTE or not self._word_in("untrusted_text", canon):
            return None
        found: set[str] = set()
        self._spend_walk("untrusted_text")
        for key, labels in self._atoms.items():
            if key.startswith("text:") and TRUSTED not in labels and canon in key:
                found |= labels
        return found or None

    def labels_of(self, value: Any) -> list[str]:
        """The labels of the data ``value`` came from (sorted): ``trusted`` or ``untrusted`` or
        ``unknown``, plus the confidentiality labels and sources (``user``, ``tool:NAME``) of
        what it matched."""
        out: set[str] = set()
        selected = None  # every untrusted scalar was picked out by the user's words
        found_leaves, cut = leaves(value)
        if cut:  # what lies past MAX_LEAVES is not examined: it may hold anything seen
            out |= self._unscanned()
            selected = False
        for leaf in found_leaves:
            if isinstance(leaf, str) and len(leaf) > MAX_TEXT:
                out |= self._unscanned()
                selected = False
                continue
            found = self._leaf(leaf)
            if UNKNOWN in found:  # a composed value beside a pick is still composed
                selected = False
            elif UNTRUSTED in found and selected is not False:
                selected = self._selected(leaf)
            out |= found
        if UNTRUSTED in out or UNKNOWN in out:
            out.discard(TRUSTED)
        if UNTRUSTED in out:
            out.discard(UNKNOWN)
            if selected:
                out.add(SELECTED)
        return sorted(out) if out else [UNKNOWN]

    def _selected(self, leaf: Any) -> bool:
        """Whether the user's own words picked ``leaf`` out of an untrusted result: ``leaf`` is
        the whole of one field of a record whose other field is a unique *key*
        (``RecordIndex.keys_naming``) holding a value the user typed (``_typed``: the whole
        value, the one identifier it is, or a run of whole words of user input; a trusted tool
        result picks nothing). "Refund GB29… for what they sent me" picks the one transaction
        whose sender is GB29…, and so its amount."""
        return any(self._typed(raw) for raw in self.records.keys_naming(leaf))

    def _typed(self, raw: Any) -> bool:
        """``raw`` is what the user typed: the whole value, the one identifier it is (every
        identifier in it typed by the user), or a run of whole words of one user input; not a
        text that merely holds typed identifiers among other words, nor words a trusted tool
        result holds."""
        whole = whole_atom(raw)
        labels = self._atoms.get(whole) if whole is not None else None
        if labels is not None and TRUSTED in labels:
            return USER in labels
        if not isinstance(raw, str):
            return False
        text = compact(raw)
        if len(text) < MIN_QUOTE:
            return False
        ids = identifiers(raw) - {whole}
        if ids and any(compact(a.partition(":")[2]) == text for a in ids):
            return all((found := self._atoms.get(a)) is not None and TRUSTED in found
                       and USER in found for a in ids)
        canon = canonical(raw)
        if canon not in self._haystack("trusted_text"):
            return False
        word = re.compile(rf"(?<!\w){re.escape(canon)}(?!\w)")
        return any(key.startswith("text:") and TRUSTED in found and USER in found
                   and canon in key and word.search(without_identifiers(key[5:])) is not None
                   for key, found in self._atoms.items())

    def _leaf(self, leaf: Any) -> set[str]:
        out = self._leaf_labels(leaf)
        if self.unplaced and TRUSTED not in out and out:
            # data that is no longer remembered may be where this value came from
            out |= self.unplaced
            if UNTRUSTED in out:
                out.discard(UNKNOWN)
                if any(a.partition(":")[0] in ADDRESS_KINDS for a in identifiers(leaf)):
                    out.add(UNTRUSTED_IDENTIFIER)
        return out

    def _leaf_labels(self, leaf: Any) -> set[str]:
        whole = whole_atom(leaf)
        if whole is None:
            return set()
        seen = self._atoms.get(whole)
        if seen is not None and TRUSTED in seen:  # a secret inside it stays secret
            out = {x for x in seen if x != UNTRUSTED}
            if isinstance(leaf, str):
                out |= self._sensitive(compact(leaf)) | self._sensitive_words(leaf)
            return out
        ids = identifiers(leaf) - {whole}
        if isinstance(leaf, str):
            quoted = self._quoted(leaf, ids)
            if quoted is not None:
                return quoted | self._sensitive(compact(leaf)) | self._sensitive_words(leaf)
        out = (self._sensitive(compact(leaf)) | self._sensitive_words(leaf)
               if isinstance(leaf, str) else set())
        untrusted = seen is not None
        if seen is not None:
            out |= seen
        all_trusted = bool(ids)
        for atom in ids:
            labels = self._atoms.get(atom)
            address = atom.partition(":")[0] in ADDRESS_KINDS
            if labels is None:
                all_trusted = False
                if address and self._identifier_piece(compact(atom.partition(":")[2])):
                    untrusted = True  # a cut-down untrusted link or address ("evil.com/x")
                    out.add(UNTRUSTED_IDENTIFIER)
            elif TRUSTED in labels:
                out |= {x for x in labels if x != UNTRUSTED}
            else:
                untrusted = True
                all_trusted = False
                out |= labels
                if address:
                    out.add(UNTRUSTED_IDENTIFIER)
        if isinstance(leaf, str) and not untrusted:
            frag = self._fragment(compact(leaf)) or self._words(leaf)
            if frag is None and all_trusted:  # the words around the typed identifiers
                rest = self._rest(leaf, ids)
                if rest:
                    frag = self._fragment(rest)
                    all_trusted = frag is None and self._in(TRUSTED, rest)
            if frag is not None:
                untrusted = True
                out |= frag
                if self._identifier_piece(compact(leaf)):
                    out.add(UNTRUSTED_IDENTIFIER)
        if untrusted:
            out.discard(TRUSTED)
            out.add(UNTRUSTED)
        elif all_trusted:
            out.add(TRUSTED)
        else:
            out.discard(TRUSTED)
            out.add(UNKNOWN)
        return out

    @staticmethod
    def _rest(leaf: str, ids: frozenset[str]) -> str:
        """The significant characters of ``leaf`` outside its identifiers, when letters remain
        (``MIN_QUOTE`` or more of them); else ``""``."""
        rest = compact(leaf)
        for atom in sorted(ids, key=len, reverse=True):
            piece = compact(atom.partition(":")[2])
            if piece:
                rest = rest.replace(piece, "", 1)
        letters = sum(1 for c in rest if not c.isdigit())
        return rest if letters >= MIN_QUOTE else ""

    def _quoted(self, leaf: str, ids: frozenset[str]) -> set[str] | None:
        """The labels of trusted input that ``leaf`` repeats, or None. Trusted wins over an
        untrusted sighting of the same value, as for whole values:

        1. ``leaf`` is exactly one identifier (its significant characters are the identifier's)
           and every identifier in it appeared in trusted input: an IBAN the user typed is the
           user's even when a sender's transaction shows the same IBAN as a whole value;
        2. ``leaf`` (``MIN_QUOTE`` or more significant characters) is a piece of a trusted text,
           whole words only: what the user quoted ("update the password to '1j1l-2k3j'") was
           seen, so it is not ``unknown``.
        """
        text = compact(leaf)
        if len(text) < MIN_QUOTE:
            return None
        if ids and any(compact(a.partition(":")[2]) == text for a in ids):
            found = [self._atoms.get(a) for a in ids]
            if all(labels is not None and TRUSTED in labels for labels in found):
                return {x for labels in found if labels for x in labels if x != UNTRUSTED}
        canon = canonical(leaf)
        if not self._word_in("trusted_text", canon):
            return None
        out: set[str] = set()
        self._spend_walk("trusted_text")
        for key, labels in self._atoms.items():
            if key.startswith("text:") and TRUSTED in labels and canon in key:
                out |= labels - {UNTRUSTED}
        return out or None

    def labels_of_args(self, args: Mapping[str, Any]) -> dict[str, list[str]]:
        """``labels_of`` for every argument, plus identifiers split across arguments: when the
        arguments' texts joined together hold an untrusted-only identifier that no single
        argument holds, every argument that is a piece of it is labelled untrusted too."""
        self._budget = SCAN_BUDGET
        try:
            return self._labels_of_args(args)
        except OverBudget:  # too much to search: every argument may hold anything seen
            unscanned = sorted(self._unscanned())
            return {str(k): unscanned for k in args}
        finally:
            self._budget = None

    def _labels_of_args(self, args: Mapping[str, Any]) -> dict[str, list[str]]:
        out = {str(k): self.labels_of(v) for k, v in args.items()}
        sensitive = bool(self._haystack("sensitive"))
        if not (self._untrusted_seen or sensitive):  # nothing to rebuild a value from
            return out
        pieces = [(str(k), s) for k, v in args.items() for s in scalars(v)
                  if isinstance(s, str | int | float) and not isinstance(s, bool)]
        flat = [(name, p) for name, s in pieces if (p := compact(s))]
        if len(flat) < 2:
            return out
        if sensitive:  # a secret cut into pieces too short to be fragments is still secret
            absent = [len(p) >= MIN_FRAGMENT and not self._in("sensitive", p) for _, p in flat]
            for run in itertools.islice(_runs(flat, absent), 4_096):
                text = "".join(p for _, p in run)
                if len(text) >= MIN_FRAGMENT and self._in("sensitive", text):
                    for name in {name for name, _ in run}:
                        out[name] = sorted(set(out[name]) | self._sensitive(text))
        if not self._untrusted_seen:
            return out
        leaves_ = pieces

        def taint(names: Iterable[str], labels: set[str]) -> None:  # labels may add the flag
            for name in names:  # a piece of something untrusted is not what the user picked
                merged = (set(out[name]) | labels) - {TRUSTED, UNKNOWN, SELECTED}
                merged.add(UNTRUSTED)
                out[name] = sorted(merged)

        # runs of pieces in argument order, and every ordered pair, rebuilt into one text; a
        # run is in the untrusted haystack only if each of its pieces is, so a run holding a
        # long piece that is not there is not searched for (each search reads the haystack)
        absent = [len(p) >= MIN_FRAGMENT and not self._in(UNTRUSTED, p) for _, p in flat]
        for run in itertools.islice(_runs(flat, absent), 4_096):
            text = "".join(p for _, p in run)
            if (len(text) >= MIN_FRAGMENT and self._in(UNTRUSTED, text)
                    and not self._in(TRUSTED, text)):
                extra = {UNTRUSTED_IDENTIFIER} if self._identifier_piece(text) else set()
                taint({name for name, _ in run}, (self._fragment(text) or set()) | extra)
        spaced = " ".join(canonical(s) if isinstance(s, str) else repr(s) for _, s in leaves_)
        for atom in identifiers(spaced):
            labels = self._atoms.get(atom)
            if labels is None or TRUSTED in labels:
                continue
            whole = compact(atom.partition(":")[2])
            if any(whole in p for _, p in flat):
                continue  # one argument holds it whole: labels_of has labelled that argument
            extra = {UNTRUSTED_IDENTIFIER} if atom.partition(":")[0] in ADDRESS_KINDS else set()
            taint({name for name, p in flat if len(p) >= 2 and p in whole}, labels | extra)
        return out

    def session_labels(self) -> list[str]:
        return sorted(self.labels)
