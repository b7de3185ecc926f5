"""What a compiled policy's rules ask of the flow tracker: the labels they name, whether they read
``session.history``, and the flow note of a decision."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from bastion.policy._celast import checked_expr


def flow_note(data: Mapping[str, Any]) -> str:
    """Why, in flow terms: each argument's labels and the session's (for the audit event)."""
    parts = [f"{k}={'+'.join(v)}" for k, v in sorted(data["arg_labels"].items())]
    session = data.get("session")
    note = "flow: args " + ("; ".join(parts) or "none")
    if isinstance(session, dict) and session.get("labels"):
        note += f"; session {'+'.join(session['labels'])}"
    return note[:1000]


def literals(programs: Iterable[Any]) -> set[str]:
    """The string literals of compiled conditions (read from CEL's checked AST, so escapes and
    raw strings are CEL's own): the labels a policy may ask about."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, tuple | list):
            if len(node) == 2 and node[0] == "const" and isinstance(node[1], str):
                found.add(node[1])
            for item in node:
                walk(item)

    for program in programs:
        if program is not None:
            try:
                walk(checked_expr(program))
            except (ValueError, KeyError, IndexError, StopIteration, UnicodeDecodeError):
                continue  # a literal missed here only costs the per-label fallback a label
    return {x for x in found if 0 < len(x) <= 64 and ":" not in x}


# session.history, session["history"]: the plain ways CEL can read it
_HISTORY_REF = re.compile(r"\bsession\s*(?:\.\s*history\b|\[\s*[\"']history[\"']\s*\])")


def reads_history(compiled: Any) -> bool:
    """Whether a rule's condition may read ``session.history``: named plainly, or, in its
    checked AST, the variable ``session`` used other than by a field or a constant key that is
    not ``history`` (``session[r"history"]``, ``session["his" + "tory"]``, ``session`` passed
    whole). A condition that does not name ``session`` cannot read it; one whose AST cannot be
    read is taken to."""
    when = compiled.rule.when or ""
    if "session" not in when:
        return False
    if _HISTORY_REF.search(when):
        return True
    try:
        root = checked_expr(compiled.program, members=True)
    except (ValueError, KeyError, IndexError, StopIteration, UnicodeDecodeError, AttributeError):
        return True

    def reads(node: Any) -> bool:
        if not isinstance(node, tuple) or not node:
            return False
        if node == ("other",):
            return True
        if node == ("ident", "session"):
            return True  # used whole
        if node[0] == "select" and node[1] == ("ident", "session"):
            return bool(node[2] == "history")
        if node[0] == "call" and node[1] == "_[_]" and node[2] and \
                node[2][0] == ("ident", "session"):
            key = node[2][1]
            return not (key[0] == "const" and key[1] != "history") or reads(key)
        return any(reads(x) for x in node[1:] if isinstance(x, tuple)) or any(
            reads(y) for x in node[1:] if isinstance(x, list) for y in x)

    return reads(root)
