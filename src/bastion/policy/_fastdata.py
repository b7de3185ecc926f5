"""The data the fast path (``_fastpath``) runs on: what the caller must check, and what it drops.

* ``clean(value)``: whether CEL holds ``value`` unchanged. The caller runs the fast path only on
  clean data; anything else goes to CEL.
* ``typed(data)``: the binding's first rule (see ``_fastpath``). A variable is converted to its
  declared type (``bastion.policy._cel.VARIABLES``) when first read, and a value that does not
  fit makes every read of it an error; ``typed`` leaves such variables out, so that the compiled
  functions, which answer ``None`` on an absent variable, err on them too.
"""

from __future__ import annotations

from typing import Any

from bastion._canon import valid_text

INT64 = (-(2**63), 2**63 - 1)  # the range of a CEL int

# The declared types of ``bastion.policy._cel.VARIABLES`` that can reject a clean value:
# ``tool`` a string, the maps maps, ``arg_labels`` a map of lists of strings (``result`` is dyn).
_DECLARED: dict[str, type] = {
    "tool": str, "args": dict, "agent": dict, "session": dict, "context": dict,
    "tool_info": dict, "arg_labels": dict,
}


def clean(value: Any, depth: int = 0) -> bool:
    """Whether CEL holds ``value`` unchanged: exact dict (string keys), list, str, int within
    64 bits, float, bool and None, no NUL byte or lone surrogate in any string, at most 64
    levels deep."""
    t = type(value)
    if t is str:
        return "\x00" not in value and (value.isascii() or _text_ok(value))
    if t is dict:
        if depth > 64:
            return False
        for k in value:
            if type(k) is not str or "\x00" in k or (not k.isascii() and not _text_ok(k)):
                return False
        return _clean_items(value.values(), depth)
    if t is list:
        return depth <= 64 and _clean_items(value, depth)
    if t is int:
        return bool(INT64[0] <= value <= INT64[1])
    return t is float or t is bool or value is None


def _text_ok(text: str) -> bool:
    """No NUL byte, and valid Unicode (CEL cannot hold a lone surrogate: it errs)."""
    return "\x00" not in text and valid_text(text)


def _clean_items(values: Any, depth: int) -> bool:
    """``clean`` for the values of a map or the elements of a list at ``depth``."""
    for v in values:
        tv = type(v)
        if tv is str:
            if "\x00" in v or (not v.isascii() and not _text_ok(v)):
                return False
        elif tv is int:
            if not INT64[0] <= v <= INT64[1]:
                return False
        elif tv is list:
            if depth >= 64 or not _clean_items(v, depth + 1):
                return False
        elif not (tv is float or tv is bool or v is None or clean(v, depth + 1)):
            return False
    return True


def typed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the variables CEL cannot convert to their declared types: CEL errs on
    every read of such a variable, as the compiled functions do on an absent one."""
    for name, value in data.items():
        if not _fits(name, value):
            return {k: v for k, v in data.items() if _fits(k, v)}
    return data


def _fits(name: str, value: Any) -> bool:
    kind = _DECLARED.get(name)
    return kind is None or (type(value) is kind
                            and (name != "arg_labels" or _is_labels(value)))


def _is_labels(value: Any) -> bool:
    """Whether ``value`` is a ``map(string, list(string))`` (keys are strings in clean data)."""
    if type(value) is not dict:
        return False
    for labels in value.values():
        if type(labels) is not list:
            return False
        for label in labels:
            if type(label) is not str:
                return False
    return True
