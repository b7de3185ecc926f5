"""Redaction obligations: rewrite arguments or a result before they travel on.

Paths are dotted (``args.card.number``; ``*`` matches every key or index at that level). A pattern
is an RE2 expression; every match inside every string leaf below the root is replaced. The input is
never modified: a redacted copy is returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

MASK = "[REDACTED]"


@lru_cache(maxsize=256)
def _pattern(source: str) -> Any:
    import re2  # imported on first use

    return re2.compile(source)


def redact(root: Any, paths: tuple[str, ...], pattern: str | None) -> Any:
    """Return a copy of ``root`` with every path masked and every pattern match replaced. The
    bare root (``args``) masks every value of a map and keeps its keys, so a call's arguments
    stay a map of the same parameters; the bare ``result`` is masked whole."""
    out = _copy(root)
    for p in paths:
        parts = p.split(".")[1:]
        if not parts:
            out = dict.fromkeys(out, MASK) if p == "args" and isinstance(out, dict) else MASK
            continue
        out = _mask_path(out, parts)
    if pattern is not None:
        out = _mask_pattern(out, _pattern(pattern))
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):  # a read-only view or a ChainMap too: copied to a dict
        return {k: _copy(v) for k, v in value.items()}
    if _named(value):  # opened by _fields where a path or a pattern reaches it
        return value
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, tuple | set | frozenset):  # kept their types (a tool may rely on it)
        return _retype(value, [_copy(v) for v in value])
    return value


def _retype(like: Any, items: list[Any]) -> Any:
    """``items`` as a container of ``like``'s type; of its base type (tuple, set, frozenset)
    when that type will not take them as one iterable and hold them as given."""
    base = next(t for t in (tuple, frozenset, set) if isinstance(like, t))
    try:
        out = type(like)(items)
        same = list(out) == items if base is tuple else len(out) == len(base(items))
        if same:
            return out
    except Exception:
        pass
    return base(items)


def _mask_path(node: Any, parts: list[str]) -> Any:
    head, rest = parts[0], parts[1:]
    if isinstance(node, _SCALARS):
        return node  # nothing below it
    fields = _fields(node)
    if fields is not None:  # conditions read a dataclass or a model as the map of its fields
        return _rebuilt(node, _mask_path(fields, parts))
    if isinstance(node, tuple | set | frozenset):  # masked as a list, then its type again
        return _retype(node, _mask_path(list(node), parts))
    if not isinstance(node, dict | list):
        return MASK  # an object the path may lead into and nothing here can open: all of it
    if isinstance(node, dict):
        keys = list(node) if head == "*" else [k for k in node if str(k) == head]
        for k in keys:
            node[k] = MASK if not rest else _mask_path(node[k], rest)
    elif isinstance(node, list):
        idx = range(len(node)) if head == "*" else [int(head)] if head.isdigit() else []
        for i in idx:
            if i < len(node):
                node[i] = MASK if not rest else _mask_path(node[i], rest)
    return node


def _mask_pattern(node: Any, rx: Any) -> Any:
    """Every match in every string below ``node`` masked: map keys too, and bytes (read as
    UTF-8 text) become masked text."""
    if isinstance(node, str):
        return rx.sub(MASK, node)
    if isinstance(node, bytes | bytearray):
        text = bytes(node).decode("utf-8", "replace")
        masked = rx.sub(MASK, text)
        return node if masked == text else masked
    if isinstance(node, Mapping):
        out: dict[Any, Any] = {}
        for k, v in node.items():
            key = rx.sub(MASK, k) if isinstance(k, str) else k
            n = 1
            while key in out:  # two keys masked alike: keep both values
                n += 1
                key = f"{rx.sub(MASK, k)} ({n})"
            out[key] = _mask_pattern(v, rx)
        return out
    fields = _fields(node)
    if fields is not None:
        return _rebuilt(node, _mask_pattern(fields, rx))
    if isinstance(node, list):
        return [_mask_pattern(v, rx) for v in node]
    if isinstance(node, tuple | set | frozenset):
        return _retype(node, [_mask_pattern(v, rx) for v in node])
    if node is None or isinstance(node, bool | int | float):
        return node
    text = str(node)  # any other object (a dataclass, an SDK model): as its text when it matches
    masked = rx.sub(MASK, text)
    return node if masked == text else masked


_SCALARS = (str, bytes, bytearray, int, float, type(None))


def _named(value: Any) -> bool:
    """A named tuple (its fields have names a path can use)."""
    return isinstance(value, tuple) and hasattr(type(value), "_fields") \
        and callable(getattr(value, "_replace", None))


def _fields(node: Any) -> dict[str, Any] | None:
    """The fields of a dataclass, a pydantic model (its extra fields too: conditions and the
    tool read them) or a named tuple as a map (copied), else None."""
    if isinstance(node, type):
        return None
    if dataclasses.is_dataclass(node):
        return {f.name: _copy(getattr(node, f.name, None)) for f in dataclasses.fields(node)}
    if _named(node):
        return {name: _copy(value) for name, value in zip(type(node)._fields, node,
                                                           strict=False)}
    fields = getattr(type(node), "model_fields", None)
    if isinstance(fields, Mapping) and callable(getattr(node, "model_copy", None)):
        extra = getattr(node, "model_extra", None) or {}
        return {name: _copy(getattr(node, name, None)) for name in [*fields, *extra]}
    return None


def _rebuilt(node: Any, fields: dict[str, Any]) -> Any:
    """``node`` with the fields that redaction changed replaced (a tuple stays a tuple);
    when it cannot be rebuilt (fields set outside ``__init__``, a model that refuses the
    copy), the whole value masked."""
    changed = {name: new for name, new in fields.items()
               if not _same(new, getattr(node, name, None))}
    if not changed:
        return node
    try:
        if dataclasses.is_dataclass(node):
            return dataclasses.replace(node, **changed)  # type: ignore[type-var]
        if _named(node):
            return node._replace(**changed)
        return node.model_copy(update=changed)
    except Exception:
        return MASK


def _same(new: Any, old: Any) -> bool:
    """Whether redaction left a field as it was (a copied container compares by value)."""
    if new is old:
        return True
    try:  # a map or a list copied as a plain one (a defaultdict, a list subclass) counts too
        kin = type(new) is type(old) or (isinstance(old, Mapping) and type(new) is dict) or (
            isinstance(old, list) and type(new) is list)
        return kin and bool(new == old)
    except Exception:  # a value that cannot be compared: rebuilt, to be sure
        return False
