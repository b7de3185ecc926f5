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

``Provenance`` extends ``Haystacks`` (``_haystacks``), which remembers the values and keeps the
haystacks searched for them; the labelling, and so the invariants below, live here.

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

import re
from collections.abc import Iterable, Mapping
from typing import Any

from bastion.flow._hayparts import ADDRESS_KINDS, TRUSTED, UNTRUSTED, USER
from bastion.flow._haystacks import (
    _REGEX_COST,
    MIN_FRAGMENT,
    MIN_QUOTE,
    SCAN_BUDGET,
    OverBudget,
)
from bastion.flow._labels import code_name, cut_typed, merged, one_reading, text_around
from bastion.flow._records import RecordIndex
from bastion.flow._split import SELECTED, UNKNOWN, UNTRUSTED_IDENTIFIER, SplitValues
from bastion.flow._values import (
    MAX_TEXT,
    canonical,
    compact,
    identifiers,
    leaves,
    whole_atom,
    without_identifiers,
)

__all__ = ["MAX_TOOLS_SEEN", "SELECTED", "TRUSTED", "UNKNOWN", "UNTRUSTED", "UNTRUSTED_IDENTIFIER",
           "Provenance"]

MAX_TOOLS_SEEN = 1_024  # distinct tools kept beyond the history window (then: incomplete)


class Provenance(SplitValues):
    """What one session has seen, and with which labels: the remembered values (``Haystacks``),
    the session-level labels and the calls made. Not thread-safe on its own: the kernel
    serialises access per session."""

    __slots__ = ("history", "labels", "max_history", "records", "tools_seen")

    def __init__(self, *, max_values: int = 4_096, max_history: int = 64):
        super().__init__(max_values=max_values)
        self.max_history = max_history
        self._untrusted_seen = False  # anything not trusted was ever recorded
        self.records = RecordIndex()  # the records of untrusted results, for selection
        self.tools_seen: dict[str, None] = {}  # every tool called, in last-call order
        self.labels: set[str] = set()  # session level: integrity and confidentiality seen
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
        self._remember_value(value, labels)
        if TRUSTED not in labels and keys:
            self.records.remember(value, frozenset(keys))

    def record_unplaced(self, labels: Iterable[str]) -> None:
        """Data with ``labels`` was seen, but its values are not known here (a replayed fact
        kept without its data): the session has its labels, and any value not the user's
        carries them (``unplaced``)."""
        self.record(None, labels)
        self._unplace(labels)

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

    # -- asking ---------------------------------------------------------------------------------
    def _unscanned(self) -> set[str]:
        """The labels of a value too large to examine: whatever the session has seen that is not
        the user's (``unknown`` when that is nothing), so it can hide nothing."""
        out = (self.labels | self.unplaced) - {TRUSTED, USER}
        if UNTRUSTED in out or self._untrusted_seen:
            return out | {UNTRUSTED, UNTRUSTED_IDENTIFIER}
        return out | {UNKNOWN}

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
        if ids and any(compact(a.partition(":")[2]) == text for a in ids) \
                and not text_around(raw, ids):
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
        if not self.unplaced or not out:
            return out
        # data that is no longer remembered may be where this value came from, unless the
        # value is the user's own (trusted, with no tool among its sources)
        if TRUSTED in out:
            if USER in out and not any(x.startswith("tool:") for x in out):
                return out
            out |= self.unplaced - {UNTRUSTED}  # a trusted tool's value may hold a secret
            return out
        out |= self.unplaced
        if UNTRUSTED in out:
            out.discard(UNKNOWN)
            if any(a.partition(":")[0] in ADDRESS_KINDS and not self._typed_atom(a)
                   for a in identifiers(leaf)):
                out.add(UNTRUSTED_IDENTIFIER)  # an address the user did not type
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
        ids = one_reading(identifiers(leaf) - {whole}, self._typed_atom)
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
                if not address:
                    continue
                kind, _, value = atom.partition(":")
                if self._identifier_piece(piece := compact(value)):
                    untrusted = True  # a cut-down untrusted link or address ("evil.com/x")
                    out |= self._identifier_labels(piece) | {UNTRUSTED_IDENTIFIER}
                elif (held := self._address_in_text(kind, value)) is not None:
                    untrusted = True  # held where it was not recognised: the attacker's still
                    out |= held | {UNTRUSTED_IDENTIFIER}
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
            if frag is None and all_trusted:  # the text around the typed identifiers
                rest = text_around(leaf, ids)
                if rest:
                    if len(compact(rest)) >= MIN_FRAGMENT:
                        frag = self._fragment(compact(rest))
                        out |= self._sensitive(compact(rest))  # a secret quoted beside them
                    all_trusted = frag is None and self._word_in("trusted_text", rest)
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

    def _quoted(self, leaf: str, ids: frozenset[str]) -> set[str] | None:
        """The labels of trusted input that ``leaf`` repeats, or None. Trusted wins over an
        untrusted sighting of the same value, as for whole values:

        1. ``leaf`` is exactly one identifier (its significant characters are the identifier's)
           and every identifier in it appeared in trusted input: an IBAN the user typed is the
           user's even when a sender's transaction shows the same IBAN as a whole value;
        2. ``leaf`` (``MIN_QUOTE`` or more significant characters) is a piece of a trusted text,
           whole words only: what the user quoted ("update the password to '1j1l-2k3j'") was
           seen, so it is not ``unknown``; every address in it must be one the trusted input
           holds whole (the end of a typed address cut at a dot, dash or plus is another one),
           or whole but for a dot and letters after it ("www.our-company.com.They": a sentence
           run on without a space).
        """
        text = compact(leaf)
        if len(text) < MIN_QUOTE:
            return None
        if ids and any(compact(a.partition(":")[2]) == text for a in ids) \
                and not text_around(leaf, ids):  # nothing around it ("../../report.txt")
            found = [self._atoms.get(a) for a in ids]
            if all(labels is not None and TRUSTED in labels for labels in found):
                return {x for labels in found if labels for x in labels if x != UNTRUSTED}
        if not self._addresses_typed(ids):
            return None  # "smith@gmail.com" cut out of a typed "anna.smith@gmail.com" is not it
        canon = canonical(leaf)
        if not self._word_in("trusted_text", canon):
            return None
        out: set[str] = set()
        self._spend_walk("trusted_text")
        for key, labels in self._atoms.items():
            if key.startswith("text:") and TRUSTED in labels and canon in key:
                out |= labels - {UNTRUSTED}
        return out or None

    def _addresses_typed(self, ids: frozenset[str]) -> bool:
        """Every address among ``ids`` is one trusted input holds whole, or cut only where
        ``cut_typed`` allows (a host inside an e-mail address or URL goes with it)."""
        kept = [a for a in ids if a.partition(":")[0] in ADDRESS_KINDS]
        outer = [a.partition(":")[2] for a in kept if not a.startswith("host:")]
        for atom in kept:
            kind, _, value = atom.partition(":")
            if self._typed_atom(atom) or (kind == "host" and any(value in o for o in outer)):
                continue
            hay = self._haystack("trusted_text")
            self._spend(_REGEX_COST * len(hay))
            if not cut_typed(hay, kind, value):
                return False
        return True

    def labels_of_args(self, args: Mapping[str, Any]) -> dict[str, list[str]]:
        """``labels_of`` for every argument, plus identifiers split across arguments: when the
        arguments' texts joined together hold an untrusted-only identifier that no single
        argument holds, every argument that is a piece of it is labelled untrusted too."""
        self._budget = SCAN_BUDGET
        done: dict[str, list[str]] = {}
        done_count: dict[str, int] = {}  # values labelled under each name
        try:
            return self._labels_of_args(args, done, done_count)
        except OverBudget:
            # too much to search: an argument not yet labelled may hold anything seen; those
            # labelled keep their labels (any argument left holds the call in the default pack)
            unscanned = sorted(self._unscanned())
            names = [str(k) for k in args]
            complete = {n for n in done if names.count(n) == done_count.get(n, 0)}
            return {n: done[n] if n in complete else unscanned for n in names}
        finally:
            self._budget = None

    def _labels_of_args(self, args: Mapping[str, Any], done: dict[str, list[str]],
                        done_count: dict[str, int]) -> dict[str, list[str]]:
        for k, v in args.items():  # keys 1 and "1" are one name: neither hides the other
            found = self.labels_of(v)
            name = str(k)
            if not code_name(name) and (carried := self._name_labels(name)):
                found = merged(found, carried)  # a name that is data (``**kwargs``) carries it
            done[name] = merged(done[name], found) if name in done else found
            done_count[name] = done_count.get(name, 0) + 1
        out = dict(done)
        done.clear()  # past here a split value may still taint any of them
        return self._split_labels(args, out)

    def _name_labels(self, name: str) -> list[str]:
        """What an argument's name carries when it is data (an IBAN or a secret passed as a
        keyword): its untrusted and confidentiality labels, never ``trusted`` or ``unknown``
        (a name the call's author wrote is neither)."""
        found = set(self.labels_of(name))
        if UNTRUSTED not in found:
            found &= {x for x in found if x not in (TRUSTED, UNKNOWN, USER, SELECTED)
                      and not x.startswith("tool:") and x not in ("public", "internal")}
        else:
            found -= {TRUSTED, UNKNOWN, SELECTED}
        return sorted(found)

    def session_labels(self) -> list[str]:
        return sorted(self.labels)
