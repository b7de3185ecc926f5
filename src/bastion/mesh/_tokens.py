"""Capability tokens: a chain of signed links, each narrower than the one before.

A token is ``bt1.`` + base64url (no padding) of the canonical JSON list of its links. A link::

    {"v": 1, "iss": DID, "aud": DID-or-agent-id, "scopes": [...], "cons": {...},
     "iat": unix-s, "exp": unix-s, "nonce": hex, "prev": link-id | null, "sig": base64url}

The root link is signed by a trusted root key; each later link by the holder of the link before
(``iss`` = previous ``aud``). A link's id is ``sha256:`` over the canonical JSON of the link
without ``sig``; revoking an id revokes every token whose chain holds it (its descendants).

Verification (``verify_token``), in this order; the first failure raises ``TokenError``:

1. Decode strictly: size, prefix, base64url that re-encodes to the same text, canonical JSON,
   1..``MAX_DEPTH`` links with exactly the known fields of the right types, at most
   ``MAX_SCOPES`` scopes and ``MAX_IN`` values per ``in`` rule a link. (``malformed``)
2. The root link has ``prev = null`` and its ``iss`` is a trusted root. (``untrusted_root``)
3. Every link's signature verifies under its ``iss`` DID. (``signature``)
4. Every later link names the previous link's id in ``prev`` and is issued by the previous
   link's audience. (``broken_chain``)
5. Every link has ``iat <= now + skew`` and ``now < exp``; a later link expires no later than
   the one before. (``not_yet_valid``, ``expired``, ``widened``)
6. Every later link narrows the one before (``bastion.mesh._scopes.check_narrowing``). (``widened``)
7. No link id is on the revocation list. (``revoked``)
8. The last link's audience is one of the accepted audiences, when given. (``audience``)

Using a verified token (``VerifiedToken.permits``) checks the call against *every* link's scopes
and constraints, so a link that was not narrower could not grant more even if step 6 were absent.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bastion._canon import canonical_json, digest
from bastion._errors import ConfigError
from bastion.mesh._errors import TokenError, VerificationError
from bastion.mesh._keys import Identity, verify_signature
from bastion.mesh._scopes import (
    MAX_SCOPES,
    Constraints,
    check_constraints,
    check_narrowing,
    check_scope,
    permits,
)
from bastion.mesh._store import RevocationList

PREFIX = "bt1."
DOMAIN = "bastion-token-v1"
MAX_DEPTH = 8
MAX_BYTES = 64 * 1024
_FIELDS = frozenset(("v", "iss", "aud", "scopes", "cons", "iat", "exp", "nonce", "prev", "sig"))
_B64 = re.compile(r"[A-Za-z0-9_-]*")


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    """Strict base64url without padding: the text must be exactly what ``b64e`` would write."""
    if not isinstance(text, str) or _B64.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64e(data) != text:
        raise ValueError("non-canonical base64url")
    return data


def link_id(link: Mapping[str, Any]) -> str:
    return digest({k: v for k, v in link.items() if k != "sig"})


@dataclass(frozen=True, slots=True)
class Token:
    """A parsed (not yet verified) token."""

    links: tuple[dict[str, Any], ...]

    def encode(self) -> str:
        return PREFIX + b64e(canonical_json(list(self.links)))

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(link_id(link) for link in self.links)

    @property
    def id(self) -> str:
        """The id of the last link: revoking it revokes this token and its descendants."""
        return link_id(self.links[-1])

    @property
    def holder(self) -> str:
        return str(self.links[-1]["aud"])

    def __str__(self) -> str:
        return self.encode()


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed ``verify_token``; ``permits`` decides calls against it."""

    token: Token
    root: str
    holder: str
    expires: int

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.token.links[-1]["scopes"])

    def permits(self, tool: str, args: Mapping[str, Any]) -> str | None:
        """``None`` when every link allows ``tool`` with ``args``; else the first reason."""
        for depth, link in enumerate(self.token.links):
            problem = permits(link["scopes"], link["cons"], tool, args)
            if problem is not None:
                return problem if depth == len(self.token.links) - 1 else \
                    f"{problem} (link {depth})"
        return None


def _sign_link(issuer: Identity, body: dict[str, Any]) -> dict[str, Any]:
    payload = canonical_json(body)
    return {**body, "sig": b64e(issuer.sign(DOMAIN, payload))}


def _body(issuer: Identity, audience: str, scopes: Collection[str], cons: Constraints,
          iat: int, exp: int, prev: str | None) -> dict[str, Any]:
    if not isinstance(audience, str) or not audience:
        raise ConfigError("a token needs an audience (a DID or an agent id)")
    if not scopes:
        raise ConfigError("a token needs at least one scope")
    if len(set(scopes)) > MAX_SCOPES:
        raise ConfigError(f"a token holds at most {MAX_SCOPES} scopes")
    return {"v": 1, "iss": issuer.did, "aud": audience,
            "scopes": sorted({check_scope(s) for s in scopes}), "cons": cons, "iat": iat,
            "exp": exp, "nonce": secrets.token_hex(16), "prev": prev}


def issue_token(root: Identity, *, audience: str, scopes: Collection[str],
                constraints: Mapping[str, Any] | None = None, ttl_s: int = 3600,
                now: float) -> Token:
    """A root token signed by ``root`` for ``audience``, valid ``ttl_s`` seconds from ``now``."""
    if ttl_s <= 0:
        raise ConfigError("ttl_s must be positive")
    cons = check_constraints(constraints or {})
    iat = int(now)
    return Token((_sign_link(root, _body(root, audience, scopes, cons, iat, iat + ttl_s, None)),))


def delegate_token(parent: Token | str, holder: Identity, *, audience: str,
                   scopes: Collection[str] | None = None,
                   constraints: Mapping[str, Any] | None = None, ttl_s: int | None = None,
                   now: float) -> Token:
    """Append a link by which ``holder`` (the parent's audience) passes a narrower token on.

    ``scopes`` default to the parent's; ``constraints`` are *added* to the parent's (a rule
    given for an existing argument replaces it and must be tighter); the expiry is the
    parent's, or ``now + ttl_s`` if sooner. ``ConfigError`` if the result would not narrow.
    """
    token = parse_token(parent) if isinstance(parent, str) else parent
    last = token.links[-1]
    if holder.did != last["aud"]:
        raise ConfigError(f"only the holder {last['aud']!r} can delegate this token")
    if len(token.links) >= MAX_DEPTH:
        raise ConfigError(f"a token chain holds at most {MAX_DEPTH} links")
    merged: dict[str, Any] = {s: {a: dict(r) for a, r in args.items()}
                              for s, args in last["cons"].items()}
    for scope, args in (constraints or {}).items():
        for arg, rules in (args or {}).items():
            merged.setdefault(scope, {}).setdefault(arg, {}).update(rules)
    cons = check_constraints(merged)
    child_scopes = sorted(set(scopes)) if scopes is not None else list(last["scopes"])
    for s in child_scopes:
        check_scope(s)
    problem = check_narrowing(last["scopes"], last["cons"], child_scopes, cons)
    if problem is not None:
        raise ConfigError(f"delegation would widen the token: {problem}")
    iat = int(now)
    exp = int(last["exp"]) if ttl_s is None else min(int(last["exp"]), iat + ttl_s)
    body = _body(holder, audience, child_scopes, cons, iat, exp, link_id(last))
    return Token((*token.links, _sign_link(holder, body)))


def parse_token(text: str) -> Token:
    """Step 1 of verification: decode strictly, without checking signatures."""
    if not isinstance(text, str) or len(text) > MAX_BYTES or not text.startswith(PREFIX):
        raise TokenError("malformed", "not a bastion token (bt1.)")
    try:
        raw = b64d(text[len(PREFIX):])
        links = orjson.loads(raw)
        if canonical_json(links) != raw:
            raise ValueError("non-canonical json")
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise TokenError("malformed", f"cannot decode token: {exc}") from None
    if not isinstance(links, list) or not 1 <= len(links) <= MAX_DEPTH:
        raise TokenError("malformed" if not isinstance(links, list) or not links else "too_deep",
                         f"a token holds 1 to {MAX_DEPTH} links")
    for i, link in enumerate(links):
        _check_shape(i, link)
    return Token(tuple(links))


def _check_shape(i: int, link: Any) -> None:
    def bad(what: str) -> TokenError:
        return TokenError("malformed", f"link {i}: {what}")

    if not isinstance(link, dict) or set(link) != _FIELDS:
        raise bad("unexpected or missing fields")
    if type(link["v"]) is not int or link["v"] != 1:  # not True, not 1.0
        raise bad(f"unknown version {link['v']!r}")
    for key in ("iss", "aud", "nonce", "sig"):
        if not isinstance(link[key], str) or not link[key]:
            raise bad(f"{key!r} must be a non-empty string")
    for key in ("iat", "exp"):
        if type(link[key]) is not int:
            raise bad(f"{key!r} must be an integer")
    if link["prev"] is not None and not isinstance(link["prev"], str):
        raise bad("'prev' must be a link id or null")
    if not isinstance(link["scopes"], list) or not 1 <= len(link["scopes"]) <= MAX_SCOPES:
        raise bad(f"'scopes' must be a list of 1 to {MAX_SCOPES} scopes")
    try:
        for s in link["scopes"]:
            check_scope(s)
        if check_constraints(link["cons"]) != link["cons"]:
            raise ConfigError("constraints are not in canonical form")
    except ConfigError as exc:
        raise bad(str(exc)) from None


def verify_token(text: str, *, roots: Collection[str], now: float,
                 audience: Collection[str] | None = None,
                 revocations: RevocationList | None = None, skew_s: int = 30,
                 issuer_ok: Callable[[str], bool] | None = None) -> VerifiedToken:
    """Verify ``text`` (steps 1-8 of the module docstring) and return it as ``VerifiedToken``."""
    # one DID given as text is that DID, not a collection of its substrings
    roots = {roots} if isinstance(roots, str) else roots
    audience = {audience} if isinstance(audience, str) else audience
    token = parse_token(text)  # step 1
    links = token.links
    if links[0]["prev"] is not None or links[0]["iss"] not in roots:  # step 2
        raise TokenError("untrusted_root", f"root issuer {links[0]['iss']!r} is not trusted")
    for i, link in enumerate(links):  # step 3
        try:
            verify_signature(link["iss"], DOMAIN, canonical_json(
                {k: v for k, v in link.items() if k != "sig"}), b64d(link["sig"]))
        except (VerificationError, ValueError) as exc:
            raise TokenError("signature", f"link {i}: {exc}") from None
    ids = token.ids
    for i in range(1, len(links)):  # step 4
        if links[i]["prev"] != ids[i - 1] or links[i]["iss"] != links[i - 1]["aud"]:
            raise TokenError("broken_chain", f"link {i} does not continue link {i - 1}")
        if issuer_ok is not None and not issuer_ok(links[i]["iss"]):
            raise TokenError("issuer", f"link {i} was delegated by {links[i]['iss']!r}, which "
                             "is not the current key of an active agent (rotated or revoked)")
    for i, link in enumerate(links):  # step 5
        if link["iat"] > now + skew_s:
            raise TokenError("not_yet_valid", f"link {i} is issued in the future")
        if now >= link["exp"]:
            raise TokenError("expired", f"link {i} expired at {link['exp']}")
        if i and link["exp"] > links[i - 1]["exp"]:
            raise TokenError("widened", f"link {i} outlives its parent")
    for i in range(1, len(links)):  # step 6
        problem = check_narrowing(links[i - 1]["scopes"], links[i - 1]["cons"],
                                  links[i]["scopes"], links[i]["cons"])
        if problem is not None:
            raise TokenError("widened", f"link {i}: {problem}")
    if revocations is not None:  # step 7
        hit = revocations.first_revoked(ids)
        if hit is not None:
            raise TokenError("revoked", f"link {ids.index(hit)} ({hit}) is revoked")
    if audience is not None and links[-1]["aud"] not in audience:  # step 8
        raise TokenError("audience", f"token is for {links[-1]['aud']!r}, not {sorted(audience)}")
    return VerifiedToken(token, links[0]["iss"], links[-1]["aud"], links[-1]["exp"])
