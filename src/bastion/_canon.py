"""Canonical encodings shared by the kernel, the audit log and the approvals.

Two things are canonical here and nowhere else:

* **tool names** — NFKC, casefold, Unicode format characters (zero-width, bidi controls) removed,
  surrounding white space trimmed. A name that still holds anything but ASCII letters, digits and
  ``_ - . : /`` is invalid (``canonical_tool`` returns ``None``) and the kernel denies it.
* **JSON** — UTF-8, keys sorted, no insignificant white space, integers exact. Non-finite floats and
  non-string keys are errors. It is what the audit chain hashes and what action digests are over.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import math
import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

_VALID_TOOL = re.compile(r"[a-z0-9_\-.:/]+")


class LazyModule:
    """A module imported on first attribute access, which then replaces this stand-in in the
    namespace that holds it (so later uses cost a plain global lookup). For dependencies that
    are slow to import and not needed by ``import bastion`` itself: ``orjson`` pulls in uuid,
    dataclasses and json."""

    def __init__(self, name: str, namespace: dict[str, Any]):
        self._name, self._namespace = name, namespace

    def __getattr__(self, attr: str) -> Any:
        import importlib

        module = importlib.import_module(self._name)
        self._namespace[self._name] = module
        return getattr(module, attr)


orjson: Any = LazyModule("orjson", globals())


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _drop_format(match: re.Match[str]) -> str:
    run = match.group()
    return "".join(ch for ch in run if unicodedata.category(ch) != "Cf")


def strip_format(text: str) -> str:
    """``text`` without Unicode format characters (category Cf: zero-width, bidi controls, tag
    characters); ASCII has none, so only non-ASCII runs are looked at."""
    if text.isascii():
        return text
    return _NON_ASCII.sub(_drop_format, text)


@lru_cache(maxsize=4096)
def canonical_tool(name: str) -> str | None:
    """Return the canonical form of a tool name, or ``None`` when it is not a valid name."""
    if not isinstance(name, str):
        return None
    text = strip_format(unicodedata.normalize("NFKC", name)).casefold()
    text = unicodedata.normalize("NFKC", text).strip()
    if not text or _VALID_TOOL.fullmatch(text) is None:
        return None
    return text


def norm_text(text: str) -> str:
    """NFKC, casefold, format characters (zero-width, bidi) stripped, trimmed: CEL's ``norm``."""
    folded = strip_format(unicodedata.normalize("NFKC", text)).casefold()
    return unicodedata.normalize("NFKC", folded).strip()


def _default(value: Any) -> Any:
    canonical = getattr(value, "__canonical__", None)
    if canonical is not None:  # a value computed when it is encoded (e.g. off the hot path)
        return canonical()
    if isinstance(value, int):  # beyond 64 bits: orjson refuses; keep it exact as a string
        return {"$bigint": str(value)}
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value, key=repr) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, Mapping):  # a read-only view (MappingProxyType) and the like
        return dict(value)
    raise TypeError(f"{type(value).__name__!r} is not JSON-encodable")


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` canonically (see module docstring). Raises ``TypeError``/``ValueError``."""
    try:
        out: bytes = orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=_default)
    except orjson.JSONEncodeError as exc:
        if "Integer exceeds" not in str(exc):
            raise ValueError(str(exc)) from exc
        out = orjson.dumps(_widen(value), option=orjson.OPT_SORT_KEYS, default=_default)
    if b"null" in out:  # orjson writes NaN and infinities as null: refuse them instead
        _reject_non_finite(value)
    return out


def _reject_non_finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"non-finite number {value!r} cannot be encoded")
    fields = _dataclass_fields(value)  # orjson writes a dataclass's NaN as null too
    if fields is not None:
        _reject_non_finite(fields)
    elif isinstance(value, enum.Enum):  # and an Enum's value, and what a hook computes
        _reject_non_finite(value.value)
    elif callable(canonical := getattr(value, "__canonical__", None)):
        _reject_non_finite(canonical())
    elif isinstance(value, Mapping):
        for item in value.values():
            _reject_non_finite(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _reject_non_finite(item)


def _has_non_finite(value: Any) -> bool:
    try:
        _reject_non_finite(value)
    except ValueError:
        return True
    return False


def _widen(value: Any) -> Any:
    """Copy ``value`` with integers beyond 64 bits made explicit, for orjson."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else {"$bigint": str(value)}
    if isinstance(value, dict):
        return {k: _widen(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_widen(v) for v in value]
    return value


def _dataclass_fields(value: Any) -> dict[str, Any] | None:
    """A dataclass instance's fields by name (as orjson writes it), else None."""
    if hasattr(type(value), "__dataclass_fields__") and not isinstance(value, type):
        import dataclasses

        return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    return None


#: the tagged forms' keys: a caller's map with exactly these keys is recorded as {"$obj": map}
_TAGS = frozenset(("$str", "$float", "$bigint", "$bytes", "$map", "$obj", "$masked"))


def looks_tagged(value: Mapping[Any, Any]) -> bool:
    """Whether a map would read as one of the tagged forms (``{"$float": "nan"}``,
    ``{"$repr": ..., "$type": ...}``, ...): such a map of a caller's is recorded as
    ``{"$obj": map}``, so a tagged form and the data that looks like it never encode alike."""
    n = len(value)
    if n == 1:
        return next(iter(value)) in _TAGS
    return n == 2 and "$repr" in value and "$type" in value


def _plain_keys(value: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and valid_text(k) for k in value)


def digest(value: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def snapshot(value: Any) -> Any:
    """A deep, JSON-shaped copy of ``value`` taken now: what the audit records of an action.

    Integers beyond 64 bits become ``{"$bigint": ...}``, non-finite floats ``{"$float": ...}``,
    text that is not valid UTF-8 (a lone surrogate) ``{"$str": <escaped>}``, a map with a key
    that is not text (or not valid text) ``{"$map": [[key, value], ...]}``, a caller's map that
    reads as one of these forms ``{"$obj": map}``, a dataclass the map of its fields, and other
    objects JSON cannot hold ``{"$repr": ..., "$type": ...}``, so recording never fails, never
    shows a value that was not passed (orjson alone writes NaN as null), never makes two
    different values alike, and never changes what the caller holds.
    """
    try:
        out = orjson.dumps(value, default=_lossy)  # a key that is not text: refused, walked
    except (orjson.JSONEncodeError, TypeError):
        return _walk(value, 0)
    if (b"null" in out and _has_non_finite(value)) or b'{"$' in out:
        return _walk(value, 0)  # a NaN, or a tagged form or a map that looks like one
    return orjson.loads(out)


def valid_text(text: str) -> bool:
    """Whether ``text`` is valid Unicode (UTF-8 can hold it: no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(text: str) -> str:
    """``text`` as valid UTF-8: a lone surrogate becomes its ``\\udxxx`` escape."""
    return text if valid_text(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def repaired(value: Any, depth: int = 0) -> Any:
    """``value`` with only what JSON text cannot carry made explicit: text that is not valid
    UTF-8 as ``{"$str": <escaped>}`` and non-finite floats as ``{"$float": ...}``; anything
    else is kept as it is, so an object ``canonical_json`` refuses is still refused (the audit
    records such a body as malformed rather than as a lossy copy)."""
    if depth > 64:
        raise ValueError("nested deeper than 64 levels")
    if isinstance(value, str):
        return value if valid_text(value) else {"$str": _escaped(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    fields = _dataclass_fields(value)
    if fields is not None:
        value = fields
    if isinstance(value, Mapping):
        if not _plain_keys(value):
            return {"$map": _pairs([(repaired(k, depth + 1), repaired(v, depth + 1))
                                    for k, v in value.items()])}
        out = {k: repaired(v, depth + 1) for k, v in value.items()}
        return {"$obj": out} if looks_tagged(out) else out
    if isinstance(value, list | tuple):
        return [repaired(v, depth + 1) for v in value]
    return value


def _lossy(value: Any) -> Any:
    try:
        return _default(value)
    except TypeError:
        return {"$repr": repr(value)[:256], "$type": type(value).__name__}


def _pairs(pairs: list[tuple[Any, Any]]) -> list[list[Any]]:
    """A map's (key, value) pairs in one order whatever the map's: by the key's JSON text."""
    return [[k, v] for k, v in sorted(pairs, key=lambda p: orjson.dumps(
        p[0], option=orjson.OPT_SORT_KEYS))]


def jsonable(value: Any) -> Any:
    """A deep, JSON-shaped copy for code that reads it back (a saga step's result, a value
    that crosses JSON): keys as text, NaN and infinities as ``{"$float": ...}``, lone
    surrogates as ``{"$str": ...}``, bytes as ``{"$bytes": ...}``, other objects as
    ``{"$repr": ..., "$type": ...}``. Plain JSON data comes back equal, and so does this
    function's own output (unlike ``snapshot``, which keeps every value apart for the audit)."""
    try:
        out = orjson.dumps(value, default=_lossy, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        return _walk(value, 0, tagged=False)
    if b"null" in out and _has_non_finite(value):
        return _walk(value, 0, tagged=False)
    return orjson.loads(out)


def _walk(value: Any, depth: int, tagged: bool = True) -> Any:
    if depth > 64:
        return {"$repr": "<nested deeper than 64 levels>", "$type": type(value).__name__}
    if isinstance(value, str):
        return value if valid_text(value) else {"$str": _escaped(value)}
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else {"$bigint": str(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, enum.Enum):
        return _walk(value.value, depth + 1, tagged)
    fields = _dataclass_fields(value)
    if fields is not None:
        value = fields
    if isinstance(value, Mapping):
        if not tagged:
            return {_escaped(str(k)): _walk(v, depth + 1, tagged) for k, v in value.items()}
        if not _plain_keys(value):
            return {"$map": _pairs([(_walk(k, depth + 1), _walk(v, depth + 1))
                                    for k, v in value.items()])}
        out = {k: _walk(v, depth + 1) for k, v in value.items()}
        return {"$obj": out} if looks_tagged(out) else out
    if isinstance(value, list | tuple):
        return [_walk(v, depth + 1, tagged) for v in value]
    if isinstance(value, set | frozenset):
        return [_walk(v, depth + 1, tagged) for v in sorted(value, key=repr)]
    lossy = _lossy(value)  # a form of _default's may hold more to walk (a Mapping view)
    return lossy if isinstance(lossy, dict) and lossy.keys() <= {"$repr", "$type", "$bytes",
                                                                  "$bigint"} \
        else _walk(lossy, depth + 1, tagged)


def unicode_host(name: str) -> str:
    """``name`` with its IDNA labels ("xn--80ab2al") in Unicode ("банк"), so either spelling of
    a host is one value; a label that is no valid IDNA stays as written."""
    if "xn--" not in name:
        return name
    labels = []
    for label in name.split("."):
        if label.startswith("xn--"):
            with contextlib.suppress(UnicodeError):
                label = label.encode("ascii").decode("idna")
        labels.append(label)
    return ".".join(labels)
