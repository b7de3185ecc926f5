"""The CEL environment policies are written against, and its extra functions.

Variables: ``tool`` (string), ``args``, ``agent``, ``session``, ``context`` (maps), ``result`` (any,
post_tool), ``now`` (timestamp), ``tool_info`` (the tool's catalog entry: ``class``,
``side_effects``, ``sinks``, ``declared``), ``arg_labels`` (argument name to the labels of the
data it came from: ``trusted``/``untrusted``/``unknown``, confidentiality, ``user``/``tool:NAME``;
see ``bastion.flow``). With flow tracking on, ``session.labels`` lists the integrity and
confidentiality labels the session has seen and ``session.history`` its prior allowed tool calls.
Functions beyond standard CEL and its string extension:

* ``norm(s)`` — NFKC, casefold, zero-width and bidi characters stripped, trimmed.
* ``host(s)`` — the lower-cased host of a URL, ``user@host`` or bare host string ("" if none).
* ``leaves(x)`` — every scalar inside a nested map or list, as a flat list (a scalar gives ``[x]``).
* ``glob(s, pattern)`` — shell-style match (``*``, ``?``, ``[abc]``) of the whole string.
* ``path(s)`` — a normalised POSIX path: percent-decoded, backslashes as slashes, ``.``/``..``
  resolved, duplicate slashes removed.
* ``path_within(p, root)`` — whether ``path(p)`` is ``root`` or lies below it.
* ``s.matches(re)`` is standard CEL and uses RE2, so regular expressions run in linear time.

cel-expr-python cannot dispatch a function declared over ``dyn``, so every function taking "any
value" is declared once per concrete CEL kind. A Python exception inside a function becomes a CEL
error value, which the combiner treats as an error, never as a result.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

from cel_expr_python import cel
from cel_expr_python.ext import ext_strings

from bastion._canon import norm_text, strip_format, unicode_host

T = cel.Type
_ANY_KINDS: dict[str, Any] = {
    "string": T.STRING,
    "int": T.INT,
    "uint": T.UINT,
    "double": T.DOUBLE,
    "bool": T.BOOL,
    "null": T.NULL,
    "bytes": T.BYTES,
    "map": T.Map(T.DYN, T.DYN),
    "list": T.List(T.DYN),
    "timestamp": T.TIMESTAMP,
    "duration": T.DURATION,
}
MAX_LEAVES = 100_000

VARIABLES: dict[str, Any] = {
    "tool": T.STRING,
    "args": T.Map(T.STRING, T.DYN),
    "agent": T.Map(T.STRING, T.DYN),
    "session": T.Map(T.STRING, T.DYN),
    "context": T.Map(T.STRING, T.DYN),
    "result": T.DYN,
    "now": T.TIMESTAMP,
    "tool_info": T.Map(T.STRING, T.DYN),
    "arg_labels": T.Map(T.STRING, T.List(T.STRING)),
}


_LIST_MARKS = re.compile(r"[\s,;<>]")


def host(text: str) -> str:
    """Lower-cased host of a URL (``https://u@h:1/p``), ``user@host`` or bare host string.

    Parsed the way a client connects: a backslash ends the authority (WHATWG), ideographic full
    stops are dots (IDNA), IPv4 in decimal, hex or octal forms becomes dotted-quad,
    ``//host/path`` is scheme-relative, and IDNA labels are read in Unicode
    (``xn--80ab2al.xn--p1ai`` is ``банк.рф``). "" when there is no host, and when the authority
    holds white space, ``,``, ``;``, ``<`` or ``>`` (several addresses, or a display name), or a
    ``mailto:`` names more recipients in its query.
    """
    raw = norm_text(text).replace("\\", "/").replace("\u3002", ".")
    if "://" not in raw and not raw.startswith("//"):
        raw = "//" + raw
    try:
        parts = urlsplit(raw)
        name = parts.hostname or ""
    except ValueError:
        return ""
    if _LIST_MARKS.search(parts.netloc):  # "x@evil.test, ops@example.com": several addresses
        return ""  # (or a display name) are no one host: the last one's must not answer
    if "mailto:" in raw[:10].casefold() and "@" in unquote(unquote(parts.query)):
        return ""  # "mailto:ops@example.com?cc=x%40evil.test": more recipients in the query
    name = norm_text(unquote(name)).replace("\u3002", ".").rstrip(".")
    return _ipv4(name) or unicode_host(name)


def _ipv4(name: str) -> str | None:
    """Dotted-quad form of an IPv4 address written in any form inet_aton accepts."""
    if not name or not _IPV4ISH.fullmatch(name):
        return None
    try:
        import socket

        return socket.inet_ntoa(socket.inet_aton(name))
    except OSError:
        return None


_IPV4ISH = re.compile(r"[0-9a-fx.]+")


def leaves(value: Any) -> list[Any]:
    """Every scalar inside ``value``, depth first; refuses more than ``MAX_LEAVES``."""
    out: list[Any] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))
        else:
            out.append(item)
            if len(out) > MAX_LEAVES:
                raise ValueError(f"more than {MAX_LEAVES} leaves")
    return out


@lru_cache(maxsize=1024)
def _glob_re(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.DOTALL)


def glob(text: str, pattern: str) -> bool:
    return _glob_re(pattern).match(text) is not None


def path(text: str) -> str:
    """Normalise a path so that ``/srv/../etc``, ``%2e%2e`` and ``\\`` cannot hide a location.

    Percent-decoding (up to three layers), NFKC (so a fullwidth solidus is a slash) with
    zero-width and bidi characters removed, backslashes as slashes, NUL bytes removed,
    ``.``/``..`` resolved, duplicate slashes removed. Case is kept, since it names different
    files on most file systems; use ``path(norm(p))`` to fold it as well.
    """
    decoded = text
    for _ in range(3):  # undo double and triple percent-encoding
        nxt = unquote(decoded)
        if nxt == decoded:
            break
        decoded = nxt
    decoded = strip_format(unicodedata.normalize("NFKC", decoded))
    decoded = decoded.replace("\\", "/").replace("\x00", "")
    if not decoded:
        return ""
    out = posixpath.normpath(decoded)
    return "/" + out.lstrip("/") if out.startswith("//") else out


def path_within(candidate: str, root: str) -> bool:
    p, r = path(candidate), path(root).rstrip("/") or "/"
    if r == "/":
        return p.startswith("/")
    return p == r or p.startswith(r + "/")


def _overloads(name: str, ret: Any, fn: Callable[..., Any], params: list[Any]) -> list[Any]:
    return [cel.Overload(f"{name}_{'_'.join(params)}", ret, [_kind(p) for p in params], impl=fn)]


def _kind(p: str) -> Any:
    return _ANY_KINDS[p]


def _functions() -> list[Any]:
    any_leaves = [
        cel.Overload(f"leaves_{k}", T.List(T.DYN), [t], impl=leaves) for k, t in _ANY_KINDS.items()
    ]
    return [
        cel.FunctionDecl("norm", _overloads("norm", T.STRING, norm_text, ["string"])),
        cel.FunctionDecl("host", _overloads("host", T.STRING, host, ["string"])),
        cel.FunctionDecl("leaves", any_leaves),
        cel.FunctionDecl("glob", _overloads("glob", T.BOOL, glob, ["string", "string"])),
        cel.FunctionDecl("path", _overloads("path", T.STRING, path, ["string"])),
        cel.FunctionDecl(
            "path_within", _overloads("path_within", T.BOOL, path_within, ["string", "string"])
        ),
    ]


@lru_cache(maxsize=1)
def environment() -> Any:
    """The one CEL environment (built once per process)."""
    return cel.NewEnv(
        variables=VARIABLES, functions=_functions(), extensions=[ext_strings.ExtStrings()]
    )


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def referenced_variables(source: str) -> frozenset[str]:
    """Variables a condition may read: every top-level name that appears as a word.

    Over-inclusive on purpose (a name inside a string literal counts); the kernel binds only these,
    which keeps activations small without ever leaving out one that is read.
    """
    return frozenset(_WORD.findall(source)) & VARIABLES.keys()
