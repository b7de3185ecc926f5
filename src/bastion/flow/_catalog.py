"""The tool catalog: what each tool is, as far as governance needs to know.

A catalog (YAML, beside the policy) declares per tool its **class** (``read``, ``write`` — side
effects inside the organisation, ``egress`` — sends data out, ``code`` — executes code,
``admin`` — privileged), whether it has side effects, which arguments are **sinks** (the
*address* of the call: recipients, URLs, amounts, paths, ids — what decides where it goes or what
it changes), which are **content** (the *payload* it delivers: a body, subject, message, page
content; an argument is one or the other, never both), the labels its **result** carries (integrity
``trusted``/``untrusted``, confidentiality such as ``public``/``internal``/``secret``) and how
the result goes back to the model (``handling``: ``pass``, ``mark`` or ``quarantine``; see
``bastion.flow._results``) and which fields of its records the system itself sets, so that a
value the user typed there names the record (``keys``: a transaction's ``sender``, a message's
author; never free text a third party writes; see "Selection" in docs/flow.md).
Tool names are canonicalised like everywhere else. A tool the catalog does not name gets the
safe defaults: class ``unknown`` (only the most privileged ring may call it), side effects,
untrusted results. Loading is strict, with ``PATH:LINE:COL`` on every mistake::

    version: 1
    tools:
      send_email: {class: egress, sinks: [to], content: [subject, body]}
      read_inbox: {class: read, side_effects: false,
                   result: {integrity: untrusted, confidentiality: internal, handling: mark,
                            keys: [from, date]}}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion._canon import canonical_tool
from bastion._errors import PolicyError
from bastion.flow._results import HANDLINGS
from bastion.policy._yaml import Located, LocatedList, read_source, read_yaml

CLASSES = ("read", "write", "egress", "code", "admin", "unknown")
INTEGRITY = ("trusted", "untrusted")
_TOOL_KEYS = ("class", "side_effects", "sinks", "content", "result", "description")
_LABEL = re.compile(r"[a-z][a-z0-9_\-]{0,63}")
_RESULT_KEYS = ("integrity", "confidentiality", "handling", "keys")
# labels with another meaning: integrity, sources and flow states
_RESERVED = frozenset({"trusted", "untrusted", "unknown", "user", "selected", "incomplete", "ended",
                       "injection", "untrusted_identifier"})


@dataclass(frozen=True, slots=True)
class ToolInfo:
    name: str
    tool_class: str = "unknown"
    side_effects: bool = True
    sinks: tuple[str, ...] = ()
    integrity: str = "untrusted"
    confidentiality: str = "internal"
    declared: bool = False
    handling: str = "pass"
    content: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()  # fields of the result's records that can name a record


@dataclass(frozen=True, slots=True)
class ToolCatalog:
    tools: dict[str, ToolInfo]
    source: str = "<text>"

    def get(self, tool: str) -> ToolInfo:
        """The entry for a canonical tool name; the safe defaults when it is not declared."""
        found = self.tools.get(tool)
        return found if found is not None else ToolInfo(name=tool)


EMPTY_CATALOG = ToolCatalog({})


def load_catalog(source: str | Path) -> ToolCatalog:
    """A catalog from a path, or from YAML text when ``source`` is a string holding a newline,
    or a one-line ``version: …`` or ``{…}`` document (so a file named ``version.yaml`` is still
    a path). A missing file is a ``PolicyError``, never read as text."""
    if isinstance(source, str):
        head = source.lstrip()
        if "\n" in source or head.startswith(("version:", "{")):
            return parse_catalog(source)
    return parse_catalog(read_source(source), path=str(source))


def parse_catalog(text: str, *, path: str = "<catalog>") -> ToolCatalog:
    doc = read_yaml(text, path)
    if not isinstance(doc, Located):
        raise PolicyError("a catalog must be a mapping with 'version' and 'tools'", path=path,
                          line=1, column=1)
    _keys(doc, ("version", "tools", "description"), "catalog", path)
    version = doc.get("version")
    if type(version) is not int or version != 1:  # not True, not 1.0
        pos = doc.value_pos.get("version", doc.pos)
        raise PolicyError("catalog 'version' must be 1", path=path, line=pos.line,
                          column=pos.column)
    tools_node = doc.get("tools", Located())
    if not isinstance(tools_node, Located):
        pos = doc.value_pos["tools"]
        raise PolicyError("'tools' must be a mapping of tool name to entry", path=path,
                          line=pos.line, column=pos.column)
    tools: dict[str, ToolInfo] = {}
    for raw, entry in tools_node.items():
        kp = tools_node.key_pos[raw]
        name = canonical_tool(str(raw))
        if name is None:
            raise PolicyError(f"invalid tool name {raw!r}", path=path, line=kp.line,
                              column=kp.column)
        if name in tools:
            raise PolicyError(f"tool {name!r} is declared twice", path=path, line=kp.line,
                              column=kp.column)
        if not isinstance(entry, Located):
            raise PolicyError(f"the entry of {raw!r} must be a mapping", path=path, line=kp.line,
                              column=kp.column)
        tools[name] = _entry(name, entry, path)
    return ToolCatalog(tools, path)


def _entry(name: str, node: Located, path: str) -> ToolInfo:
    _keys(node, _TOOL_KEYS, f"tool {name!r}", path)
    cls = node.get("class", "unknown")
    _choice(node, "class", cls, CLASSES, path)
    side = node.get("side_effects", cls not in ("read",))
    if not isinstance(side, bool):
        _fail(node, "side_effects", "'side_effects' must be true or false", path)
    sinks = node.get("sinks", LocatedList())
    if not isinstance(sinks, list) or not all(isinstance(s, str) and s for s in sinks):
        _fail(node, "sinks", "'sinks' must be a list of argument names", path)
    content = node.get("content", LocatedList())
    if not isinstance(content, list) or not all(isinstance(s, str) and s for s in content):
        _fail(node, "content", "'content' must be a list of argument names", path)
    both = sorted(set(sinks) & set(content))
    if both:
        _fail(node, "content", f"argument {both[0]!r} is both a sink and content", path)
    result = node.get("result", Located())
    if not isinstance(result, Located):
        _fail(node, "result", "'result' must be a mapping", path)
    _keys(result, _RESULT_KEYS, f"result of {name!r}", path)
    integrity = result.get("integrity", "untrusted")
    _choice(result, "integrity", integrity, INTEGRITY, path)
    conf = result.get("confidentiality", "internal")
    if not isinstance(conf, str) or not _LABEL.fullmatch(conf):  # as policies spell them
        _fail(result, "confidentiality", "'confidentiality' must be a label of lower-case "
              f"letters, digits, '_' and '-' (such as 'secret'), not {conf!r}", path)
    if ":" in conf or conf in _RESERVED:  # never reaches session.labels, so no rule sees it
        _fail(result, "confidentiality", f"{conf!r} cannot be a confidentiality label (no "
              f"':', and none of {', '.join(sorted(_RESERVED))})", path)
    handling = result.get("handling", "pass")
    _choice(result, "handling", handling, HANDLINGS, path)
    keys = result.get("keys", LocatedList())
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        _fail(result, "keys", "'keys' must be a list of field names", path)
    # a side-effecting entry that does not list its sinks leaves its arguments' roles to the
    # safe defaults (every argument a sink), as for a tool the catalog does not name
    roles = not side or "sinks" in node
    return ToolInfo(name, str(cls), bool(side), tuple(sinks), str(integrity), str(conf), roles,
                    str(handling), tuple(content), tuple(keys))


def _keys(node: Located, allowed: tuple[str, ...], what: str, path: str) -> None:
    for key in node:
        if key not in allowed:
            kp = node.key_pos[key]
            raise PolicyError(f"unknown key {key!r} in {what}", path=path, line=kp.line,
                              column=kp.column)


def _choice(node: Located, key: str, value: Any, choices: tuple[str, ...], path: str) -> None:
    if value not in choices:
        _fail(node, key, f"{key!r} must be one of {', '.join(choices)}, not {value!r}", path)


def _fail(node: Located, key: str, message: str, path: str) -> None:
    pos = node.value_pos.get(key, node.pos)
    raise PolicyError(message, path=path, line=pos.line, column=pos.column)
