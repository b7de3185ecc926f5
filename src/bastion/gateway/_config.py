"""The MCP gateway's configuration file, read once and strictly (unknown keys, wrong types and
missing fields are ``PolicyError`` at ``PATH:LINE:COL``).

```yaml
version: 1
policy: policy.yaml          # paths are relative to this file
catalog: catalog.yaml        # optional: the tool catalog (information flow)
audit: audit.db              # optional: the audit log
state: state.db              # the kernel's state and the tool pins (a file, so pins persist)
agent: mcp-client            # optional: the agent id every call is decided for
session: desktop             # optional: the session id (default: one per gateway process)
auto_pin: true               # optional: trust a clean tool on first sight (default true)
upstreams:
  - name: files              # letters, digits, "-"; tools are served as "files__<tool>"
    command: python          # a stdio server ...
    args: [files_server.py]
    env: {ROOT: /data}
    cwd: .                   # the default: this file's folder (relative args start here)
  - name: search
    url: http://127.0.0.1:8000/mcp   # ... or a streamable HTTP server
    headers: {Authorization: Bearer ...}
```
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion._errors import BastionError, PolicyError
from bastion._sqlite import sqlite_path
from bastion.policy._yaml import Located, LocatedList, Pos, read_source, read_yaml

SEPARATOR = "__"
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_TOP = {"version", "policy", "catalog", "audit", "state", "agent", "session", "auto_pin",
        "upstreams"}
_UPSTREAM = {"name", "command", "args", "env", "cwd", "url", "headers"}


@dataclass(frozen=True, slots=True)
class Upstream:
    """One server the gateway fronts: a stdio ``command`` or a streamable HTTP ``url``."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold secrets


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    policy: str
    state: str | None
    upstreams: tuple[Upstream, ...]
    catalog: str | None = None
    audit: str | None = None
    agent: str = "mcp-client"
    session: str | None = None
    auto_pin: bool = True
    path: str = "<text>"


def load_config(path: str | os.PathLike[str]) -> GatewayConfig:
    """Read and check a gateway configuration file."""
    where = os.fspath(path)
    return parse_config(read_source(where), where, base=Path(where).resolve().parent)


def parse_config(text: str, path: str = "<text>", *, base: Path | None = None) -> GatewayConfig:
    doc = read_yaml(text, path)
    if not isinstance(doc, Located):
        raise PolicyError("expected a mapping", path=path, line=1, column=1)
    c = _Checker(path, base or Path.cwd(), text)
    c.keys(doc, _TOP, required=("version", "policy", "upstreams"))
    if type(doc["version"]) is not int or doc["version"] != 1:  # not True, not 1.0
        c.fail(doc.value_pos["version"], "unsupported version (expected 1)")
    ups = doc["upstreams"]
    if not isinstance(ups, LocatedList) or not ups:
        c.fail(doc.value_pos["upstreams"], "'upstreams' must be a non-empty list")
    upstreams: list[Upstream] = []
    for item, pos in zip(ups, ups.item_pos, strict=True):
        up = c.upstream(item, pos)
        if any(u.name == up.name for u in upstreams):
            c.fail(item.value_pos["name"], f"duplicate upstream name {up.name!r}")
        upstreams.append(up)
    if "state" not in doc:  # pins kept in memory would make every restart a first sight
        c.fail(doc.pos, "missing required key 'state' (the file that keeps tool pins)")
    state = c.path(doc, "state")
    try:
        in_memory = sqlite_path(state, "state") == ":memory:"  # as the stores will read it
    except BastionError:
        in_memory = False  # another backend: the stores say whether they have it
    if in_memory:
        c.fail(doc.value_pos["state"], "'state' must be a file (pins kept in memory would make "
                                       "every restart a first sight)")
    return GatewayConfig(
        policy=c.path(doc, "policy"), state=state,
        upstreams=tuple(upstreams), catalog=c.path(doc, "catalog", optional=True),
        audit=c.path(doc, "audit", optional=True),
        agent=c.string(doc, "agent", optional=True) or "mcp-client",
        session=c.string(doc, "session", optional=True),
        auto_pin=c.boolean(doc, "auto_pin", default=True), path=path)


class _Checker:
    def __init__(self, path: str, base: Path, text: str = ""):
        self.file, self.base = path, base
        self.lines = text.splitlines()

    def fail(self, pos: Pos, message: str) -> Any:
        raise PolicyError(message, path=self.file, line=pos.line, column=pos.column)

    def keys(self, node: Located, allowed: set[str], required: tuple[str, ...]) -> None:
        for key in node:
            if key not in allowed:
                self.fail(node.key_pos[key], f"unknown key {key!r} (expected one of "
                                             f"{', '.join(sorted(allowed))})")
        for key in required:
            if key not in node:
                self.fail(node.pos, f"missing required key {key!r}")

    def string(self, node: Located, key: str, *, optional: bool = False) -> str | None:
        if key not in node and optional:
            return None
        value = node[key]
        if not isinstance(value, str) or not value:
            self.fail(node.value_pos[key], f"{key!r} must be a non-empty string")
        return str(value)

    def boolean(self, node: Located, key: str, *, default: bool) -> bool:
        if key not in node:
            return default
        if not isinstance(node[key], bool):
            self.fail(node.value_pos[key], f"{key!r} must be true or false")
        return bool(node[key])

    def path(self, node: Located, key: str, *, optional: bool = False) -> Any:
        value = self.string(node, key, optional=optional)
        if value is not None and "\0" in value:
            self.fail(node.value_pos[key], f"{key!r} holds a NUL character")
        if value is None or "://" in value or value.startswith(":memory:"):
            return value
        return str(self.base / value)

    def strings(self, node: Located, key: str) -> tuple[str, ...]:
        value = node.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(node.value_pos[key], f"{key!r} must be a list of strings")
        return tuple(value)

    def mapping(self, node: Located, key: str) -> dict[str, str] | None:
        if key not in node:
            return None
        value = node[key]
        if not isinstance(value, dict) or not all(
                isinstance(v, str) or (type(v) is int and self._written(value, k) == str(v))
                for k, v in value.items()):
            # a number would be sent re-spelt ("2.10" as "2.1", "+5" as "5"): quoted, it is
            # not; a plain integer (8080) is sent as written
            self.fail(node.value_pos[key], f"{key!r} must map names to strings (quote numbers "
                                           "such as '2.10' or '+5')")
        return {str(k): str(v) for k, v in value.items()}

    def _written(self, node: Any, key: str) -> str:
        """The text a plain scalar value of ``node[key]`` was written as ("" if unknown)."""
        pos = getattr(node, "value_pos", {}).get(key)
        if pos is None or not 0 < pos.line <= len(self.lines):
            return ""
        token = re.match(r"[^,}\]\s#]+", self.lines[pos.line - 1][pos.column - 1:])
        return token.group(0) if token else ""

    def upstream(self, node: Any, pos: Pos) -> Upstream:
        if not isinstance(node, Located):
            self.fail(pos, "an upstream must be a mapping")
        self.keys(node, _UPSTREAM, required=("name",))
        name = self.string(node, "name") or ""
        if _NAME.fullmatch(name) is None or SEPARATOR.replace("_", "-") in name:
            self.fail(node.value_pos["name"], f"upstream name {name!r} must be lower-case "
                                              "letters, digits and single '-'")
        if ("command" in node) == ("url" in node):
            self.fail(node.pos, f"upstream {name!r} needs exactly one of 'command' or 'url'")
        if "url" in node:
            for key in ("args", "env", "cwd"):
                if key in node:
                    self.fail(node.key_pos[key], f"{key!r} applies to a 'command' upstream")
            url = self.string(node, "url") or ""
            if not url.startswith(("http://", "https://")):
                self.fail(node.value_pos["url"], "'url' must be an http:// or https:// url")
            return Upstream(name, url=url, headers=self.mapping(node, "headers") or {})
        if "headers" in node:
            self.fail(node.key_pos["headers"], "'headers' applies to a 'url' upstream")
        cwd = self.path(node, "cwd", optional=True) or str(self.base)
        return Upstream(name, command=self.string(node, "command"),
                        args=self.strings(node, "args"), env=self.mapping(node, "env"),
                        cwd=cwd)
