"""Values split across a call's arguments: an identifier or a secret cut into pieces, each piece
in another argument (or beside other text), is rebuilt from the pieces and labels every piece.

``SplitValues`` is the part of ``Provenance`` that does it (``labels_of_args`` calls
``_split_labels`` after labelling each argument on its own).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from bastion.flow._hayparts import (
    ADDRESS_KINDS,
    SELECTED,
    TRUSTED,
    UNKNOWN,
    UNTRUSTED,
    UNTRUSTED_IDENTIFIER,
)
from bastion.flow._haystacks import MIN_FRAGMENT, Haystacks
from bastion.flow._labels import code_name
from bastion.flow._values import canonical, compact, identifiers, scalars

__all__ = ["SELECTED", "UNKNOWN", "UNTRUSTED_IDENTIFIER", "SplitValues"]


class SplitValues(Haystacks):
    """Labels for pieces of one value spread over several arguments."""

    __slots__ = ("_untrusted_seen",)
    _untrusted_seen: bool  # set by Provenance: the session has read untrusted data

    def _split_labels(self, args: Mapping[str, Any],
                      out: dict[str, list[str]]) -> dict[str, list[str]]:
        """``out`` (each argument's own labels) with the labels of every value its arguments'
        pieces rebuild: a secret cut too short to be fragments, an untrusted identifier split
        over arguments, or an address split anywhere when part of the session was dropped."""
        sensitive = bool(self._haystack("sensitive"))
        if not (self._untrusted_seen or sensitive):  # nothing to rebuild a value from
            return out
        pieces = [(str(k), s) for k, v in args.items()
                  for s in ([] if code_name(str(k)) else [str(k)]) + scalars(v)  # data names too
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
        if UNTRUSTED in self.unplaced:  # an address split anywhere may be in what was dropped
            # a piece that is an address on its own is labelled on its own (and a typed IBAN
            # beside an amount would read as a longer one)
            own = [any(a.partition(":")[0] in ADDRESS_KINDS for a in identifiers(p))
                   for _, p in flat]
            for run in itertools.islice(_runs(flat, own), 4_096):
                text = "".join(p for _, p in run)
                if any(a.partition(":")[0] in ADDRESS_KINDS and not self._typed_atom(a)
                       for a in identifiers(text)):
                    taint({name for name, _ in run}, self.unplaced | {UNTRUSTED_IDENTIFIER})
        spaced = " ".join(canonical(s) if isinstance(s, str) else repr(s) for _, s in leaves_)
        for atom in identifiers(spaced):
            labels = self._atoms.get(atom)
            if labels is None and UNTRUSTED in self.unplaced and \
                    atom.partition(":")[0] in ADDRESS_KINDS:
                labels = {UNTRUSTED} | self.unplaced  # it may be in what was not remembered
            if labels is None or TRUSTED in labels:
                continue
            whole = compact(atom.partition(":")[2])
            if any(whole in p for _, p in flat):
                continue  # one argument holds it whole: labels_of has labelled that argument
            extra = {UNTRUSTED_IDENTIFIER} if atom.partition(":")[0] in ADDRESS_KINDS else set()
            taint({name for name, p in flat if (len(p) >= 2 and p in whole) or _overlaps(p, whole)},
                  labels | extra)
        return out

    def _typed_atom(self, atom: str) -> bool:
        found = self._atoms.get(atom)
        return found is not None and TRUSTED in found


def _overlaps(piece: str, whole: str) -> bool:
    """``piece`` ends with the start of ``whole`` or starts with its end (``MIN_FRAGMENT`` or
    more characters): "pay GB33BUKB2020" holds the first half of a split IBAN."""
    for k in range(MIN_FRAGMENT, min(len(piece), len(whole)) + 1):
        if piece.endswith(whole[:k]) or piece.startswith(whole[-k:]):
            return True
    return False


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
    present = [i for i in range(n) if not absent[i]]  # pairs of absent pieces cost nothing
    for x in present:
        for y in present:
            if x != y:
                yield [flat[x], flat[y]]
