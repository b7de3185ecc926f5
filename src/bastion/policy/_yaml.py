"""Strict YAML reading that keeps positions.

PyYAML's composer gives nodes with marks; this module turns them into plain values while keeping,
for every mapping key and value, the 1-based line and column a ``PolicyError`` must name. It refuses
what a policy never needs and an attacker might use: duplicate keys, aliases, custom tags and
documents beyond a size limit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml

from bastion._canon import valid_text
from bastion._errors import PolicyError

MAX_BYTES = 4 * 1024 * 1024
_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


#: the spellings of numbers that mean what they say (no octal, hex, binary, base 60 or "_")
_NUMBER_FORMS = {
    "tag:yaml.org,2002:int": re.compile(r"[-+]?(0|[1-9][0-9]*)"),
    "tag:yaml.org,2002:float": re.compile(
        r"[-+]?(([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|\.(inf|Inf|INF))|\.(nan|NaN|NAN)"),
}


@dataclass(frozen=True, slots=True)
class Pos:
    line: int
    column: int
    style: str | None = None  # a scalar's YAML style: None (plain), "'", '"', "|" or ">"


class Located(dict[str, Any]):
    """A mapping that remembers where each of its keys and values stood."""

    pos: Pos
    key_pos: dict[str, Pos]
    value_pos: dict[str, Pos]


class LocatedList(list[Any]):
    pos: Pos
    item_pos: list[Pos]


def _pos(node: yaml.Node) -> Pos:
    style = getattr(node, "style", None) if getattr(node, "id", "") == "scalar" else None
    return Pos(node.start_mark.line + 1, node.start_mark.column + 1, style)


def read_source(path: str | os.PathLike[str]) -> str:
    """The text of a policy, catalog or test file. Every failure is a ``PolicyError``: a
    missing file (never read as text), an unreadable one, and bytes that are not UTF-8 (at the
    line and column of the first bad byte)."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError("file not found", path=p, line=0, column=0) from None
    except OSError as exc:
        raise PolicyError(f"cannot read file: {exc.strerror}", path=p) from None
    except ValueError as exc:  # a NUL in the name
        raise PolicyError(f"cannot read file: {exc}", path=p.replace("\0", "\\0")) from None
    if len(raw) > MAX_BYTES:
        raise PolicyError(f"file is larger than {MAX_BYTES} bytes", path=p, line=1, column=1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PolicyError(f"not valid utf-8 (byte {exc.start})", path=p, line=line,
                          column=column) from None


def read_yaml(text: str, path: str) -> Any:
    """Parse one YAML document into ``Located`` / ``LocatedList`` / scalars."""
    import yaml  # imported on first use: it is most of the cost of importing bastion

    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise PolicyError(f"file is larger than {MAX_BYTES} bytes", path=path, line=1, column=1)
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "malformed yaml"
        raise PolicyError(f"invalid yaml: {problem}", path=path, line=line, column=col) from None
    except yaml.reader.ReaderError as exc:  # a control character: at its place, on one line
        at = max(0, min(int(exc.position), len(text)))
        line = text.count("\n", 0, at) + 1
        column = at - (text.rfind("\n", 0, at) + 1) + 1
        ch = exc.character
        code = ch if isinstance(ch, int) else ord(ch) if isinstance(ch, str) and len(ch) == 1 \
            else None
        what = f" (U+{code:04X})" if code is not None else ""
        raise PolicyError(f"invalid yaml: {exc.reason}{what}", path=path, line=line,
                          column=column) from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())  # one line
        raise PolicyError(f"invalid yaml: {detail}", path=path, line=1, column=1) from None
    if node is None:
        return None
    return _convert(node, path, _scalars()(), set())


@lru_cache(maxsize=1)
def _scalars() -> Any:
    import yaml

    class SafeScalars(yaml.SafeLoader):
        """Used only for its scalar constructors (bool, int, float, null resolution)."""

        def __init__(self) -> None:
            super().__init__("")

    return SafeScalars


def _convert(node: yaml.Node, path: str, ctor: Any, seen: set[int]) -> Any:
    if id(node) in seen:  # the composer shares a node only for an alias
        p = _pos(node)
        raise PolicyError("aliases are not allowed", path=path, line=p.line, column=p.column)
    seen.add(id(node))
    if node.tag not in _PLAIN_TAGS:
        p = _pos(node)
        raise PolicyError(
            f"tag {node.tag!r} is not allowed", path=path, line=p.line, column=p.column
        )
    if getattr(node, "id", "") == "mapping":
        out = Located()
        out.pos, out.key_pos, out.value_pos = _pos(node), {}, {}
        for key_node, value_node in node.value:
            kp = _pos(key_node)
            if getattr(key_node, "id", "") != "scalar":
                raise PolicyError(
                    "mapping keys must be plain strings", path=path, line=kp.line, column=kp.column
                )
            key = key_node.value
            _utf8(key, key_node, path)
            if key == "<<":
                raise PolicyError(
                    "merge keys ('<<') are not allowed", path=path, line=kp.line, column=kp.column
                )
            if key in out:
                raise PolicyError(
                    f"duplicate key {key!r}", path=path, line=kp.line, column=kp.column
                )
            out[key] = _convert(value_node, path, ctor, seen)
            out.key_pos[key] = kp
            out.value_pos[key] = _pos(value_node)
        return out
    if getattr(node, "id", "") == "sequence":
        seq = LocatedList()
        seq.pos, seq.item_pos = _pos(node), []
        for item in node.value:
            seq.append(_convert(item, path, ctor, seen))
            seq.item_pos.append(_pos(item))
        return seq
    if node.tag in _NUMBER_FORMS and not _NUMBER_FORMS[node.tag].fullmatch(node.value):
        p = _pos(node)  # YAML 1.1 reads 0100 as 64 and 1:30 as 90: not what a reader sees
        raise PolicyError(f"number {node.value!r} is not plain decimal (write it in decimal, "
                          "or quote it if it is text)", path=path, line=p.line, column=p.column)
    value = ctor.construct_object(node, deep=True)
    if isinstance(value, str):
        _utf8(value, node, path)
    return value


def _utf8(text: str, node: yaml.Node, path: str) -> None:
    """A lone surrogate (``"\\ud800"`` in a double-quoted scalar) is no text: refused where it
    is written, not later by CEL or the digest."""
    if not valid_text(text):
        p = _pos(node)
        raise PolicyError("text with a lone surrogate (not valid Unicode)", path=path,
                          line=p.line, column=p.column)
