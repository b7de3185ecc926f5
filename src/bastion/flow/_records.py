"""The records of untrusted results, and which of them a key names (selection; see
``Provenance._selected`` and "Selection" in docs/flow.md).

A *record* is a map with two or more string or number fields (a transaction, a message, a
contact). For each untrusted result whose tool declares ``result.keys``, the index keeps its
records (the last ``MAX_RECORD_RESULTS`` results), where each field value occurs, and, for each
key (field, identity), the distinct records holding it, over every kept result. Records nested
inside a record are never picked, but their keys count. Once a record is cut or forgotten, a key
could be ambiguous without the index knowing, so nothing more is named (``picks_lost``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from bastion.flow._values import MAX_LEAVES, compact, identifiers, whole_atom

MAX_RECORD_RESULTS = 256  # untrusted results whose records are kept for selection
MAX_PICKS = 64  # records one value may be picked from; a value held by more is no pick
MAX_FIELDS = 64  # fields of one record that are kept
_KEY_KINDS = ("num:", "date:")  # never keys: typed for other reasons, and a sender sets them


class _Result(NamedTuple):
    """The records of one untrusted result: each a tuple of (field, whole atom, value), and
    which records hold each key, by content (the same record read twice is one record)."""

    records: list[tuple[tuple[str, str, Any], ...]]
    keys: Counter[tuple[tuple[str, str], tuple[tuple[str, str], ...]]]  # (key, record) -> n
    fields: frozenset[str]  # the fields that are keys (the catalog's result.keys)


_Record = tuple[tuple[str, str, Any], ...]


def records_of(value: Any) -> tuple[list[_Record], list[_Record], bool]:
    """The maps inside ``value`` with two or more scalar fields (strings and numbers; at most
    ``MAX_FIELDS`` of them): the records that can be picked, the records nested inside a record
    (its content: never picked, but their keys still make a key ambiguous), and whether
    anything was left out (``MAX_LEAVES`` items visited, or a record wider than
    ``MAX_FIELDS``)."""
    out: list[_Record] = []
    inner: list[_Record] = []
    cut = False
    stack: list[tuple[Any, bool]] = [(value, False)]
    seen = 0
    while stack and seen < MAX_LEAVES:
        item, nested = stack.pop()
        seen += 1
        if isinstance(item, Mapping):
            fields = tuple((str(k), atom, v) for k, v in item.items()
                           if isinstance(v, str | int | float) and not isinstance(v, bool)
                           and (atom := whole_atom(v)) is not None)
            record = len(fields) >= 2
            if record:
                cut |= len(fields) > MAX_FIELDS
                (inner if nested else out).append(fields[:MAX_FIELDS])
            stack.extend((v, nested or record) for v in item.values()
                         if isinstance(v, Mapping | list | tuple))
        elif isinstance(item, list | tuple):
            stack.extend((v, nested) for v in item if isinstance(v, Mapping | list | tuple))
    out.reverse()
    return out, inner, cut or bool(stack)


def _identity(atom: str, value: Any) -> str:
    """What makes two field values one key: the identifier a text is whole (an IBAN with or
    without spaces, an e-mail address in angle brackets), else its whole atom."""
    if isinstance(value, str):
        text = compact(value)
        for ident in identifiers(value):
            if compact(ident.partition(":")[2]) == text:
                return ident
    return atom


class RecordIndex:
    """The records of one session's untrusted results. Not thread-safe on its own."""

    __slots__ = ("_by_atom", "_keys", "_results", "_seen", "picks_lost")

    def __init__(self) -> None:
        # result number -> its records; a field's whole atom -> where it is (result, indexes)
        self._results: OrderedDict[int, _Result] = OrderedDict()
        self._by_atom: dict[str, dict[int, list[int]]] = {}
        # key (field, identity) -> the distinct records holding it, over every kept result
        self._keys: dict[tuple[str, str], Counter[tuple[tuple[str, str], ...]]] = {}
        self._seen = 0
        self.picks_lost = False  # a record was cut or forgotten: keys may be ambiguous unseen

    def __len__(self) -> int:
        return len(self._results)

    def remember(self, value: Any, key_fields: frozenset[str]) -> None:
        """Keep the records of an untrusted result (each map with two or more scalar fields:
        a transaction, a message, a contact) for ``keys_naming``; the oldest results go first."""
        records, inner, cut = records_of(value)
        if cut:  # a record left out could make a key ambiguous: no more picks in this session
            self.picks_lost = True
        if not records and not inner:
            return
        number = self._seen
        self._seen += 1
        keys: Counter[tuple[tuple[str, str], tuple[tuple[str, str], ...]]] = Counter()
        for record in records + inner:  # nested records are never picked, but count as keys
            content = tuple((name, atom) for name, atom, _ in record)
            for name, atom, raw in record:
                if name in key_fields:
                    keys[((name, _identity(atom, raw)), content)] += 1
        self._results[number] = _Result(records, keys, key_fields)
        for key, content in keys:
            self._keys.setdefault(key, Counter())[content] += keys[(key, content)]
        for i, record in enumerate(records):
            for _, atom, _ in record:
                self._by_atom.setdefault(atom, {}).setdefault(number, []).append(i)
        if len(self._results) > MAX_RECORD_RESULTS:
            # a forgotten record could have made a key ambiguous: no more picks in this session
            self.picks_lost = True
            old, gone = self._results.popitem(last=False)
            for (key, content), n in gone.keys.items():
                held = self._keys[key]
                held[content] -= n
                if held[content] <= 0:
                    del held[content]
                    if not held:
                        del self._keys[key]
            for atom in {atom for record in gone.records for _, atom, _ in record}:
                where = self._by_atom.get(atom)
                if where is not None:
                    where.pop(old, None)
                    if not where:
                        del self._by_atom[atom]

    def keys_naming(self, leaf: Any) -> Iterator[Any]:
        """The values of the key fields that would name a record holding ``leaf`` whole: a
        field the catalog lists in ``result.keys`` (one the system sets, never free text),
        unique over every kept record, not a number or a date (as a number or as text), of a
        record in which ``leaf`` is the whole of another field. Whether one of them is what
        the user typed is the caller's question. Nothing once records were cut or forgotten,
        nor for a value held by more than ``MAX_PICKS`` records (which costs nothing to ask).
        Only whole field values are named, never an identifier inside a field's text."""
        whole = whole_atom(leaf)
        if whole is None or self.picks_lost:
            return
        where = self._by_atom.get(whole, {})
        if sum(len(v) for v in where.values()) > MAX_PICKS:
            return  # in that many records it names none of them
        for number, indexes in where.items():
            result = self._results[number]
            for index in indexes:
                for name, atom, raw in result.records[index]:
                    if (atom == whole or name not in result.fields or atom.startswith(_KEY_KINDS)
                            or (isinstance(raw, str) and compact(raw).isdigit())):
                        continue  # numbers and dates, as numbers or as text, name no record
                    key = (name, _identity(atom, raw))
                    if not key[1].startswith(_KEY_KINDS) and len(self._keys.get(key, ())) == 1:
                        yield raw
