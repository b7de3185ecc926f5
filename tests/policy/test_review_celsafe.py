"""Review of d104577/a66763c (argument values CEL has no type for are converted; host() reads
IDNA in Unicode and refuses a mailto with more recipients). Each test was one fail-open finding,
fixed: data CEL cannot hold as it is is converted before any condition runs (a NUL inside an
object is caught after), other objects fail closed, ``__index__`` integers read as integers, a
``mailto:`` query is percent-decoded, an ``xn--`` host rule is refused at load."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import pathlib
from typing import Any

import pydantic
import pytest

from bastion import Action, Kernel, PolicyError


def _kernel(rules: str, default: str = "deny") -> Kernel:
    return Kernel.from_text(f"version: 1\nname: review\ndefault: {default}\nrules:\n{rules}",
                            audit=False)


def _effect(kernel: Kernel, args: dict[str, Any], tool: str = "t") -> str:
    return kernel.evaluate(Action(tool=tool, args=args, agent={"id": "a1"})).effect


# --- 1. a NUL byte inside a converted object reaches CEL, which cuts the string short ---------

@dataclasses.dataclass
class _Cmd:
    cmd: str


class _CmdModel(pydantic.BaseModel):
    cmd: str


_NulEnum = enum.Enum("_NulEnum", {"RM": "ls\x00; rm -rf /"})

@pytest.mark.parametrize(("value", "plain", "where"), [
    (_Cmd("ls\x00; rm -rf /"), {"cmd": "ls\x00; rm -rf /"}, "args.r.cmd"),
    (_CmdModel(cmd="ls\x00; rm -rf /"), {"cmd": "ls\x00; rm -rf /"}, "args.r.cmd"),
    (_NulEnum.RM, "ls\x00; rm -rf /", "args.r"),
], ids=["dataclass", "pydantic", "enum"])
def test_nul_inside_converted_object_is_not_cut_short(value: Any, plain: Any, where: str) -> None:
    kernel = _kernel(f"""\
  - id: no-rm
    tools: [t]
    when: {where}.contains("rm")
    effect: deny
  - id: rest
    tools: [t]
    effect: allow
""")
    # the same text as plain data is refused (a NUL poisons every condition: deny)
    assert _effect(kernel, {"r": plain}) == "deny"
    assert _effect(kernel, {"r": value}) == "deny"


def test_nul_in_memoryview_does_not_shrink_its_size() -> None:
    kernel = _kernel("""\
  - id: too-big
    tools: [t]
    when: size(args.data) > 1024
    effect: deny
  - id: rest
    tools: [t]
    effect: allow
""")
    assert _effect(kernel, {"data": b"\x00" * 4096}) == "deny"  # plain bytes: refused
    assert _effect(kernel, {"data": memoryview(b"\x00" * 4096)}) == "deny"


# --- 2. an opaque object is a {$type, $str} map: == and `in` are false, not errors ----------

_DENY_SHADOW = """\
  - id: no-shadow
    tools: [t]
    when: args.path == "/etc/shadow" || args.path in ["/etc/passwd"]
    effect: deny
  - id: rest
    tools: [t]
    effect: allow
"""


@pytest.mark.parametrize("value", [pathlib.Path("/etc/shadow"),
                                   pathlib.PurePosixPath("/etc/passwd")],
                         ids=["path-eq", "path-in"])
def test_opaque_object_equal_to_denied_string_is_denied(value: Any) -> None:
    assert _effect(_kernel(_DENY_SHADOW), {"path": value}) == "deny"


def test_opaque_object_does_not_satisfy_allow_not_equal() -> None:
    kernel = _kernel("""\
  - id: not-metadata
    tools: [t]
    when: args.ip != "169.254.169.254"
    effect: allow
""")
    assert _effect(kernel, {"ip": ipaddress.ip_address("169.254.169.254")}) == "deny"


class _Index:
    """An integer-like (numpy.int64 behaves so): the binding reads it raw through __index__."""

    def __index__(self) -> int:
        return 5000

    def __repr__(self) -> str:
        return "_Index(5000)"


def test_integer_like_object_decides_the_same_on_both_paths() -> None:
    kernel = _kernel("""\
  - id: exact-amount
    tools: [t]
    when: args.amount == 5000
    effect: deny
  - id: rest
    tools: [t]
    effect: allow
""")
    assert _effect(kernel, {"amount": _Index()}) == "deny"  # raw path: holds today
    assert _effect(kernel, {"amount": _Index(), "tags": ("a",)}) == "deny"


# --- 3. host(): mailto recipients in the query, percent-encoded or after "mailto://" --------

_ALLOW_EXAMPLE = """\
  - id: internal-mail
    tools: [t]
    when: host(args.to) == "example.com"
    effect: allow
"""


@pytest.mark.parametrize("to", ["mailto:ops@example.com?cc=x%40evil.test",
                                "mailto:ops@example.com?bcc=x%40evil.test",
                                "mailto://ops@example.com?cc=x@evil.test"],
                         ids=["cc-pct", "bcc-pct", "mailto-slashes"])
def test_mailto_with_hidden_recipients_is_no_host(to: str) -> None:
    assert _effect(_kernel(_ALLOW_EXAMPLE), {"to": to}) == "deny"


# --- 4. host(): a deny rule written in the IDNA (punycode) spelling is dead ------------------

def test_deny_rule_written_in_punycode_still_denies() -> None:
    rules = """\
  - id: homograph
    tools: [t]
    when: host(args.url) == "xn--80ak6aa92e.com"
    effect: deny
  - id: rest
    tools: [t]
    effect: allow
"""
    try:
        kernel = _kernel(rules)
    except PolicyError:
        return  # refusing the dead literal at load would be a fix too
    assert _effect(kernel, {"url": "https://xn--80ak6aa92e.com/login"}) == "deny"


def test_an_object_whose_repr_raises_does_not_crash_the_process() -> None:
    """It crashed the CEL binding (a segfault) when handed raw; run in a child process so a
    regression fails this test instead of the whole run."""
    import subprocess
    import sys

    code = (
        "import bastion\n"
        "class Bad:\n"
        "    def __repr__(self): raise RuntimeError('no')\n"
        "k = bastion.Kernel.from_text('version: 1\\nrules:\\n  - {id: a, when: args.x == 1,"
        " effect: allow}\\n', audit=False)\n"
        "d = k.evaluate(bastion.Action(tool='t', args={'x': Bad()}))\n"
        "print(d.effect, bool(d.errors))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["deny", "True"]
