"""Review findings for the policy engine and the kernel (review-policy).

Each test asserts the behaviour the README / DESIGN.md contracts promise; all ten findings are
fixed (NUL bytes inside str/list subclasses, keywords hiding *args from govern(), redaction of
read-only and chained maps, generator results, host() of an address list, lone surrogates in
policy text and in data, a budget with no value, an identity map whose reads raise, redacted
default arguments).
"""

from __future__ import annotations

import collections
import contextlib
import types
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from bastion import Action, GovernanceDenied, Kernel, PolicyError, govern
from bastion.policy import parse_policy

try:
    from reference_eval import reference_evaluate
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests.reference_eval import reference_evaluate


def _kernel(text: str) -> Kernel:
    return Kernel.from_text(text, audit=False)


# -- 1. the NUL-byte guard misses subclasses: CEL then sees a cut-short string --------------------

NUL_POLICY = """\
version: 1
default: allow
rules:
  - id: no-rm
    tools: [shell]
    when: leaves(args).exists(v, string(v).contains("rm"))
    effect: deny
"""


class _Str(str):
    pass


class _List(list):  # type: ignore[type-arg]
    pass


_Cmd = collections.namedtuple("_Cmd", "text")


@pytest.mark.parametrize("value", [_Str("ls\x00; rm -rf /"), _List(["ls\x00; rm -rf /"]),
                                   _Cmd("ls\x00; rm -rf /")],
                         ids=["str-subclass", "list-subclass", "namedtuple"])
def test_nul_byte_inside_subclass_still_fails_closed(value: Any) -> None:
    k = _kernel(NUL_POLICY)
    # control: the same text as a plain str / list is refused (poisoned data, the rule matches)
    assert k.evaluate(Action(tool="shell", args={"cmd": "ls\x00; rm -rf /"})).effect == "deny"
    d = k.evaluate(Action(tool="shell", args={"cmd": value}))
    assert d.effect == "deny", (d.effect, d.code, d.errors)


# -- 2. govern(): a **kwargs key named like the *args parameter hides the positional values -------

SHELL_POLICY = """\
version: 1
default: allow
rules:
  - id: no-rm
    tools: [run_shell]
    when: '"rm" in args.argv'
    effect: deny
"""


def test_govern_var_keyword_cannot_shadow_var_positional() -> None:
    k = _kernel(SHELL_POLICY)
    ran: list[Any] = []

    @govern(k)
    def run_shell(*argv: str, **opts: Any) -> str:
        ran.append((argv, opts))
        return "ran"

    with contextlib.suppress(GovernanceDenied):  # control: plain positional call is denied
        run_shell("rm", "-rf", "/")
    assert ran == []
    with contextlib.suppress(GovernanceDenied):
        run_shell("rm", "-rf", "/", argv=["ls"])  # the decision sees argv=["ls"] only
    assert ran == [], f"function ran with {ran}"


# -- 3. path redaction does not enter nested non-dict mappings -------------------------------------

REDACT_POLICY = """\
version: 1
default: allow
rules:
  - id: mask-cards
    tools: [pay]
    effect: redact
    redact: [args.card.number]
"""


@pytest.mark.parametrize("card", [types.MappingProxyType({"number": "4111111111111111"}),
                                  collections.ChainMap({"number": "4111111111111111"})],
                         ids=["mappingproxy", "chainmap"])
def test_redact_path_reaches_nested_mappings(card: Mapping[str, str]) -> None:
    k = _kernel(REDACT_POLICY)
    d = k.evaluate(Action(tool="pay", args={"card": card}))
    assert d.allowed and d.redacted
    assert d.args is not None
    assert "4111111111111111" not in repr(d.args), d.args


# -- 4. post_tool redaction of a generator function's result ---------------------------------------

GEN_POLICY = """\
version: 1
default: allow
rules:
  - id: mask-tokens
    stage: post_tool
    tools: [stream_secrets]
    effect: redact
    redact_pattern: 'tok_[a-z0-9]+'
"""


def test_govern_generator_result_is_redacted() -> None:
    k = _kernel(GEN_POLICY)

    @govern(k)
    def stream_secrets(n: int) -> Iterator[str]:
        yield "key=tok_secret1"

    out = stream_secrets(1)
    items = list(out) if not isinstance(out, str) else [out]
    assert not any("tok_secret1" in str(i) for i in items), items


# -- 5. host() of a string holding several addresses -----------------------------------------------

MAIL_POLICY = """\
version: 1
default: deny
rules:
  - id: internal-mail
    tools: [send_email]
    when: host(args.to) == "example.com"
    effect: allow
"""


@pytest.mark.parametrize("to", ["x@evil.test, ops@example.com", "x@evil.test;ops@example.com",
                                "x@evil.test ops@example.com"])
def test_host_of_several_addresses_is_not_the_last_ones(to: str) -> None:
    k = _kernel(MAIL_POLICY)
    assert not k.evaluate(Action(tool="send_email", args={"to": "x@evil.test"})).allowed
    d = k.evaluate(Action(tool="send_email", args={"to": to}))
    assert not d.allowed, (to, d.rule_ids)


# -- 6. loader: a lone surrogate escape crashes instead of a PolicyError ---------------------------


def test_surrogate_escape_in_when_is_a_policy_error() -> None:
    text = ('version: 1\nrules:\n  - id: r\n    effect: deny\n'
            '    when: "args.x == \\"\\ud800\\""\n')
    with pytest.raises(PolicyError) as info:
        parse_policy(text, path="p.yaml")
    assert (info.value.line, info.value.column) != (0, 0)


# -- 7. loader: a budget written without a value is dropped silently -------------------------------


def test_budget_key_without_value_is_rejected() -> None:
    text = "version: 1\nbudgets:\n  session_calls:\nrules: []\n"
    try:
        policy = parse_policy(text, path="p.yaml")
    except PolicyError as exc:
        assert exc.line == 3, exc.render()
    else:
        raise AssertionError(f"accepted, budgets={policy.budgets}")


# -- 8. Kernel.evaluate raises when building the fail-closed deny fails too ------------------------


class _FlakyIdentity(Mapping[str, Any]):
    """An identity mapping backed by something that is down (reading it raises)."""

    def __getitem__(self, key: str) -> Any:
        raise ConnectionError("identity store unreachable")

    def __iter__(self) -> Iterator[str]:
        return iter(["id"])

    def __len__(self) -> int:
        return 1


def test_evaluate_never_raises_for_a_failing_identity_mapping() -> None:
    k = _kernel("version: 1\ndefault: allow\nrules: []\n")
    d = k.evaluate(Action(tool="t", agent=_FlakyIdentity()))
    assert d.effect == "deny" and d.code == "internal_error"


# -- 9. fast path answers where CEL errs (lone surrogate in the data) -----------------------------


def test_fast_path_agrees_with_cel_on_lone_surrogates() -> None:
    text = ("version: 1\ndefault: allow\nrules:\n  - id: big\n    tools: [transfer]\n"
            "    when: args.amount > 1000\n    effect: deny\n")
    k = _kernel(text)
    # CEL itself errs on this data; conditions see each lone surrogate as U+FFFD (README), so
    # the rule that does not read the memo decides on the amount, on either path
    args = {"amount": 5, "memo": "\ud800"}
    ref = reference_evaluate(k.policy, "pre_tool", "transfer", "", {"args": args})
    assert ref.effect == "allow" and not ref.has_errors
    d = k.evaluate(Action(tool="transfer", args=args))
    assert (d.effect, d.errors) == (ref.effect, ()), (d.effect, d.errors)
    d = k.evaluate(Action(tool="transfer", args={"amount": 5000, "memo": "\ud800"}))
    assert d.effect == "deny" and d.rule_ids == ("big",)


# -- 10. govern(): a redacted default argument is not passed on redacted ---------------------------


_DEFAULT_HEADERS = {"authorization": "Bearer tok_secret"}  # a plain dict default


def test_govern_passes_redacted_default_arguments() -> None:
    k = _kernel("version: 1\ndefault: allow\nrules:\n  - id: mask\n    tools: [fetch]\n"
                "    effect: redact\n    redact: [args.headers.authorization]\n")
    seen: list[dict[str, str]] = []

    @govern(k)
    def fetch(url: str, headers: Mapping[str, str] = _DEFAULT_HEADERS) -> None:
        seen.append(dict(headers))

    # control: passed explicitly, the header is redacted before the function runs
    fetch("https://x", {"authorization": "Bearer tok_secret"})
    assert seen[-1]["authorization"] == "[REDACTED]"
    fetch("https://x")  # the kernel redacts the bound default (next line shows it) ...
    d = k.evaluate(Action(tool="fetch", args={"url": "https://x", "headers": _DEFAULT_HEADERS}))
    assert d.args is not None and d.args["headers"]["authorization"] == "[REDACTED]"
    assert seen[-1]["authorization"] == "[REDACTED]", seen[-1]  # ... but the function got this
