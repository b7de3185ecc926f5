"""Data CEL can hold, made from what callers pass: the evaluator converts an activation with
``cel_safe`` the first time a condition errs on it (the hot path passes plain data unchanged).

What a condition then sees:

* tuples and sets as lists (sets sorted by ``repr``); subclasses of ``str``, ``int`` and
  ``float`` (``StrEnum``, ``IntEnum``) as their plain values; other enums as their value;
* ``datetime``, ``date`` and ``time`` as ISO 8601 text, ``UUID`` as its text;
* a ``Decimal`` as the float that reads back as the same decimal ("19.99"), else as its text,
  so no condition compares a rounded amount;
* an integer beyond 64 bits unchanged: CEL errs on it (an overflow is an error), so every
  condition that reads its variable fails closed;
* a string with lone surrogates with each one as U+FFFD;
* a dataclass or pydantic model as the map of its fields, ``bytearray``/``memoryview`` as
  bytes, a path (``os.PathLike``) and an IP address or network as text, an object with
  ``__index__`` as its integer;
* any other object as ``Opaque``: the binding refuses it, so every condition reading its
  variable errs and fails closed (its text is no stand-in: the tool may read other attributes);
* non-string map keys as text.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
import os
import sys
from collections.abc import Mapping
from typing import Any

from bastion.policy._fastdata import INT64


def cel_safe(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` CEL can hold (see the module docstring)."""
    if depth > 64:
        raise ValueError("value nested deeper than 64 levels")
    if isinstance(value, bool) or value is None or type(value) in (float, bytes):
        return value
    if isinstance(value, str):  # StrEnum and other subclasses: their string value
        return _text(value[:])
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):  # IntEnum and other subclasses: their integer value; beyond 64
        return int(value)  # bits CEL errs (an overflow is an error: no rounded amount is seen)
    if isinstance(value, Mapping):
        return {_key(k): cel_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [cel_safe(v, depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        return [cel_safe(v, depth + 1) for v in sorted(value, key=repr)]
    return _object(value, depth)


def _object(value: Any, depth: int) -> Any:
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    # a datetime, Decimal or UUID exists only once its module is imported: none is imported here
    dt, dec, uid = (sys.modules.get(m) for m in ("datetime", "decimal", "uuid"))
    if dt is not None and isinstance(value, dt.date | dt.time):  # a datetime is a date
        return value.isoformat()
    if dec is not None and isinstance(value, dec.Decimal):
        return _decimal(value, dec)
    if uid is not None and isinstance(value, uid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return cel_safe(value.value, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: cel_safe(getattr(value, f.name, None), depth + 1)
                for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            return cel_safe(dump(), depth + 1)
        except Exception:  # a model that cannot dump itself: as any other object
            return Opaque(value)
    if isinstance(value, os.PathLike):  # a path is its text: what the tool opens
        path = os.fspath(value)
        return _text(path) if isinstance(path, str) else path
    ip = sys.modules.get("ipaddress")
    if ip is not None and isinstance(value, ip.IPv4Address | ip.IPv6Address | ip.IPv4Network
                                     | ip.IPv6Network):  # interfaces are addresses
        return str(value)
    if hasattr(type(value), "__index__"):  # an integer by another type (numpy's): as CEL reads it
        return int(operator.index(value))
    return Opaque(value)


class Opaque:
    """Any other object, as handed to CEL: a value the binding refuses, so every condition that
    reads its variable errs (the rule fails closed). The tool may read the object by attributes
    its text does not show, so no text of it stands in; and its ``repr`` is bastion's own, so a
    ``__repr__`` that raises cannot reach the binding's error message."""

    __slots__ = ("kind",)

    def __init__(self, value: Any):
        self.kind = f"{type(value).__module__}.{type(value).__qualname__}"

    def __repr__(self) -> str:
        return f"<{self.kind} object>"


def _decimal(value: Any, dec: Any) -> Any:
    """The float that reads back as ``value`` ("19.99"), else the text: a rounded amount
    would let ``args.amount <= 1000`` pass 1000.0000000000000001."""
    if value.is_finite():
        as_float = float(value)
        if dec.Decimal(repr(as_float)) == value:
            return as_float
    return str(value)


def _text(text: str) -> str:
    """``text`` with lone surrogates as U+FFFD (CEL strings are UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def _key(key: Any) -> Any:
    if isinstance(key, bool):
        return key
    if isinstance(key, str):
        return _text(key[:])
    if isinstance(key, int) and INT64[0] <= key <= INT64[1]:
        return int(key)
    return str(key) if not isinstance(key, float) or math.isfinite(key) else repr(key)
