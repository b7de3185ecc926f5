"""The extra CEL functions: norm, host, leaves, glob, path, path_within."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.policy._cel import environment, glob, host, leaves, path, path_within


def run(expr: str, **data: Any) -> Any:
    return environment().compile(expr).eval(data=data).plain_value()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://Example.COM/a", "example.com"),
        ("https://example.com@evil.com/", "evil.com"),
        ("http://a.example.com:8080", "a.example.com"),
        ("user@Mail.Example.com", "mail.example.com"),
        ("example.com.", "example.com"),
        ("http://[::1]:80/", "::1"),
        ("https://evil.com\\@example.com/", "evil.com"),
        ("https://evil\u3002com/", "evil.com"),
        ("//evil.com/x", "evil.com"),
        ("http://2130706433/", "127.0.0.1"),
        ("http://0x7f.1/", "127.0.0.1"),
        ("ｅｘａｍｐｌｅ.com", "example.com"),
        ("http://exa\u200bmple.com", "example.com"),
        ("", ""),
    ],
)
def test_host(text: str, expected: str) -> None:
    assert host(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/srv/data/../../etc/passwd", "/etc/passwd"),
        ("/srv/%2e%2e/etc", "/etc"),
        ("/srv/%252e%252e/etc", "/etc"),
        ("C:\\x\\..\\y", "C:/y"),
        ("/SRV/Data/../x", "/SRV/x"),  # case is kept: it names another file
        ("//etc//passwd", "/etc/passwd"),
        ("a/./b", "a/b"),
    ],
)
def test_path_normalises(text: str, expected: str) -> None:
    assert path(text) == expected


def test_path_within() -> None:
    assert path_within("/srv/data/a.txt", "/srv/data")
    assert path_within("/srv/data", "/srv/data/")
    assert not path_within("/srv/database", "/srv/data")
    assert not path_within("/srv/data/../secrets", "/srv/data")
    assert not path_within("relative/file", "/srv")


def test_leaves_and_glob() -> None:
    assert leaves({"a": [1, {"b": "x"}], "c": None}) == [1, "x", None]
    assert leaves("s") == ["s"]
    assert glob("send_email", "send_*") and not glob("resend", "send_*")


def test_functions_from_cel() -> None:
    assert run("norm(args.to) == 'a@b.c'", args={"to": " A@B.C\u200b "}) is True
    assert run("host(args.url) == 'evil.com'", args={"url": "https://ok.com@evil.com"}) is True
    assert run("leaves(args).exists(v, v == 'deep')", args={"x": [{"y": ["deep"]}]}) is True
    assert run("leaves(args.n).size() == 1", args={"n": 5}) is True
    assert run("path_within(args.p, '/tmp')", args={"p": "/tmp/../etc"}) is False
    assert run("args.s.matches('^[a-z]+$')", args={"s": "abc"}) is True


def test_nul_bytes_never_reach_cel_cut_short() -> None:
    from bastion import Action, Kernel

    policy = """\
version: 1
rules:
  - {id: deny-rm, tools: [shell], when: "args.cmd.contains('rm')", effect: deny}
  - {id: allow-ls, tools: [shell], when: "args.cmd.startsWith('ls')", effect: allow}
"""
    with Kernel.from_text(policy, audit=False) as k:
        assert k.evaluate(Action(tool="shell", args={"cmd": "ls -l"})).allowed
        for args in ({"cmd": "ls\x00; rm -rf /"}, {"cmd": "ls", "x": [b"a\x00b"]},
                     {"cmd": "ls", "k\x00": 1}):
            d = k.evaluate(Action(tool="shell", args=args))
            assert d.effect == "deny" and d.rule_ids == ("deny-rm",) and "NUL" in d.errors[0]


def test_function_errors_are_error_values_not_results() -> None:
    value = environment().compile("leaves(args).size() > 0").eval(
        data={"args": {"x": list(range(200_000))}})
    assert value.type().name() == "ERROR"
