"""Labels, and which haystack of a session's remembered values a key belongs to (``Haystacks``
keeps them apart by label: trusted and untrusted texts, sensitive texts, untrusted addresses).

Pure helpers of ``_haystacks``; no state.
"""

from __future__ import annotations

from bastion._canon import unicode_host
from bastion.flow._values import compact

TRUSTED, UNTRUSTED = "trusted", "untrusted"
UNKNOWN = "unknown"
UNTRUSTED_IDENTIFIER = "untrusted_identifier"
SELECTED = "selected"  # an untrusted value the user's own words picked out (see _selected)
ADDRESS_KINDS = frozenset({"email", "url", "host", "iban"})  # identifiers that say where to go
USER = "user"
_PLAIN = frozenset({TRUSTED, UNTRUSTED, USER, "public", "internal"})


_HAY_KINDS = (TRUSTED, UNTRUSTED, "sensitive")  # haystacks of compact texts
KINDS = (*_HAY_KINDS, "trusted_text", "untrusted_text", "untrusted_ids")


def _sensitive_labels(labels: set[str] | frozenset[str]) -> bool:
    """Labels above ``internal`` (a confidentiality such as ``secret``), sources aside."""
    extra = labels - _PLAIN
    return bool(extra) and not all(x.startswith("tool:") for x in extra)


def haystacks_of(hay: bool, key: str, labels: set[str] | frozenset[str]) -> tuple[str, ...]:
    """The haystacks a remembered key belongs to (``hay``: a compact text, else an atom)."""
    trusted = TRUSTED in labels
    if hay:
        first = TRUSTED if trusted else UNTRUSTED
        return (first, "sensitive") if _sensitive_labels(labels) else (first,)
    kind = key.partition(":")[0]
    if kind == "text":
        return ("trusted_text",) if trusted else ("untrusted_text",)
    if kind in ADDRESS_KINDS and not trusted:
        return ("untrusted_ids",)
    return ()


def piece_of(kind: str, key: str) -> str:
    """What of a remembered key a haystack holds."""
    if kind in _HAY_KINDS:
        return key
    if kind == "untrusted_ids":
        tag, _, value = key.partition(":")
        if "xn--" not in value or tag not in ("host", "email"):
            return compact(value)
        local, at, host = value.rpartition("@")  # an IDN host in either spelling
        return f"{compact(value)}\x00{compact(local + at + unicode_host(host))}"
    return key[5:]  # "text:..." without its tag


def defanged(address: str) -> tuple[str, ...]:
    """``address`` as written, and as people write one so it is not a link ("evil[.]com",
    "evil(.)com", "evil[dot]com", "evil. com") or as NFKC leaves one typed with a dash
    ("evil–bank.com" reads "evil bank.com"): each is the same address."""
    if "." not in address:
        return (address,)
    head, _, last = address.rpartition(".")
    forms = [address] + [address.replace(".", dot) for dot in _DOTS_WRITTEN] \
        + [f"{head}{dot}{last}" for dot in _DOTS_WRITTEN]  # often only the last dot is
    if "-" in address:
        forms.append(address.replace("-", " "))
    return tuple(dict.fromkeys(forms))


_DOTS_WRITTEN = ("[.]", "(.)", "{.}", "[dot]", "(dot)", " dot ", ". ", " .", " . ")
