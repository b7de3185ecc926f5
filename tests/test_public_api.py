"""The public surface is small and pinned: adding or removing a name is a deliberate change."""

from __future__ import annotations

import inspect

import bastion
import bastion.audit
import bastion.policy


def test_top_level_names() -> None:
    assert sorted(bastion.__all__) == sorted([
        "Action", "ApprovalError", "AuditError", "BastionError", "ConfigError", "Decision",
        "GovernanceDenied", "Kernel", "PolicyError", "PolicyWarning", "StateError", "__version__",
        "approval", "govern",
    ])
    for name in bastion.__all__:
        assert hasattr(bastion, name), name


def test_error_tree() -> None:
    for err in (bastion.PolicyError, bastion.ConfigError, bastion.GovernanceDenied,
                bastion.AuditError, bastion.StateError, bastion.ApprovalError):
        assert issubclass(err, bastion.BastionError)
        assert err.code != bastion.BastionError.code
    e = bastion.PolicyError("unknown key 'x'", path="p.yaml", line=3, column=5)
    assert (e.path, e.line, e.column) == ("p.yaml", 3, 5)
    assert str(e) == "p.yaml:3:5: error: unknown key 'x'"


def test_kernel_constructors_take_keyword_options() -> None:
    for ctor in (bastion.Kernel.from_policy, bastion.Kernel.from_text):
        params = list(inspect.signature(ctor).parameters.values())
        assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert all(p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD)
                   for p in params[1:])


def test_decision_fields_are_stable() -> None:
    fields = bastion.Decision._fields
    for name in ("id", "effect", "rule_ids", "errors", "reasons", "code", "approval_id",
                 "args", "result", "redacted", "policy", "stage", "tool"):
        assert name in fields
    d = bastion.Decision("x", "deny", "pre_tool", "t")
    assert d.allowed is False and d._replace(effect="allow").allowed is True


def test_subpackages_re_export_only() -> None:
    assert {"verify", "AuditLog", "read_events", "prove_inclusion",
            "prove_consistency"} <= set(bastion.audit.__all__)
    assert {"parse_policy", "load_policy", "evaluate", "compile_policy"} <= set(
        bastion.policy.__all__)
