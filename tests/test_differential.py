"""Differential tests: the optimised evaluator (index, effect tiers, combined ``||``/``[...]``
programs, static verdicts, lazy CEL-safe data) and the full ``Kernel`` against the naive reference
evaluator in ``reference_eval.py``, over thousands of random policies and actions."""

from __future__ import annotations

import itertools
import json
import re
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bastion
from bastion._canon import canonical_tool
from bastion.policy import Effect, Stage, compile_policy, evaluate, parse_policy
from bastion.policy._compile import check_condition

try:
    from reference_eval import reference_canonical_tool, reference_evaluate
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests.reference_eval import reference_canonical_tool, reference_evaluate

# -- vocabulary ------------------------------------------------------------------------------

TOOL_GLOBS = ["send_email", "Send_Email", "transfer", "drop_table", "read_*", "*", "[st]*"]
AGENT_GLOBS = ["*", "agent-1", "agent-*", "bot", "[ab]*", "Agent-1", "[!a]*"]
STAGES = ["input", "pre_tool", "post_tool", "output"]
EFFECTS = [e.value for e in Effect]
ACTION_TOOLS = ["send_email", "SEND_EMAIL", "Send_Email", "transfer", "drop_table", "read_file",
                "read_", "stat", "s", "t", "other", "ｔｒａｎｓｆｅｒ", "drop\u200b_table", None,
                "", "\u0455end_email", "send email"]
AGENT_IDS = ["agent-1", "agent-2", "Agent-1", "bot", "alice", "", "b*"]
KEYS = ["a", "b", "n", "d", "s", "l", "m", "k", "url", "x", "secret"]

# Atomic conditions: every one is valid, bool-typed CEL over tool/args/agent/context/result; many
# can error at run time (missing key, wrong type, division by zero, overflow, bad conversion).
ATOM_TEMPLATES = [
    "args.{k} {cmp} {i}",
    "args.{k} {cmp} {i}",
    "args.{k} == '{s}'",
    "args.{k} != '{s}'",
    "args.{k} in [{i}, '{s}']",
    "args.{k} in ['{s}', 'x']",
    "'{k}' in args",
    "has(args.{k})",
    "has(args.m.{k})",
    "has(context.env)",
    "size(args.{k}) {cmp} {i}",
    "size(args) {cmp} {i}",
    "norm(args.{k}) == '{s}'",
    "norm(tool) == 'send_email'",
    "host(args.url) == 'example.com'",
    "host(args.{k}) == '{s}'",
    "leaves(args).exists(v, v == '{s}')",
    "leaves(args).exists(v, v == {i})",
    "leaves(args).all(v, type(v) != string || size(v) < 3)",
    "size(leaves(args)) {cmp} {i}",
    "args.n / args.d {cmp} {i}",
    "args.n % args.d == 0",
    "args.n + args.n {cmp} {i}",
    "args.n * {i} {cmp} {i}",
    "int(args.{k}) {cmp} {i}",
    "double(args.{k}) > 1.5",
    "args.{k} > 1.5",
    "args.m.{k} == {i}",
    "args.l[0] == {i}",
    "args.{k}.startsWith('a')",
    "args.{k}.contains('x')",
    "args.s.matches('^a.*c$')",
    "tool == 'transfer'",
    "tool.startsWith('read_')",
    "tool in ['send_email', 'stat']",
    "agent.id == 'agent-1'",
    "agent.id.startsWith('agent')",
    "context.env == 'prod'",
    "context.env != '{s}'",
    "result == '{s}'",
    "true",
    "false",
    # the shapes a Python fast path may answer without CEL: paths, literals of every kind,
    # comparisons either way round, ``in`` over literals, ``has``
    "args.{k} {cmp} {f}",
    "{i} {cmp} args.{k}",
    "{f} {cmp} args.m.{k}",
    "args.{k} == {lit}",
    "args.{k} != {lit}",
    "args.{k} in [{i}, {f}, '{s}', true, null]",
    "args.{k} {cmp} '{s}'",
    "args.m.{k} {cmp} {i}",
    "args.m.{k} == '{s}'",
    "!has(args.{k})",
    "result.{k} == {i}",
    "has(result.{k})",
    "result == null",
    "tool {cmp} '{s}'",
    "context.env in ['prod', 'dev']",
    "agent.id != 'bot'",
]
# Only what a Python fast path for simple conditions can answer without CEL (paths, literals,
# comparisons, ``in`` over literals, ``has``, and ``&&``/``||``/``!`` over those): some policies
# are built from these alone so that every candidate condition is in that subset.
SIMPLE_TEMPLATES = [
    "args.{k} {cmp} {i}", "args.{k} {cmp} {f}", "{i} {cmp} args.{k}", "args.{k} == {lit}",
    "args.{k} != {lit}", "args.{k} == '{s}'", "args.{k} in [{i}, {f}, '{s}', true, null]",
    "args.{k} in ['{s}', 'x']", "args.{k} {cmp} '{s}'", "args.m.{k} {cmp} {i}",
    "args.m.{k} == '{s}'", "has(args.{k})", "!has(args.{k})", "has(args.m.{k})",
    "has(context.env)", "context.env == 'prod'", "context.env in ['prod', 'dev']",
    "tool == 'transfer'", "tool {cmp} '{s}'", "tool in ['send_email', 'stat']",
    "agent.id == 'agent-1'", "agent.id != 'bot'", "result.{k} == {i}", "has(result.{k})",
    "result == null", "true", "false",
]
SAFE_TEMPLATES = [
    "'{k}' in args",
    "has(args.{k})",
    "has(context.env)",
    "size(args) {cmp} {i}",
    "size(leaves(args)) {cmp} {i}",
    "leaves(args).exists(v, v == '{s}')",
    "norm(tool) == 'send_email'",
    "tool == 'transfer'",
    "tool.startsWith('read_')",
    "agent.id == 'agent-1'",
    "has(args.{k}) && type(args.{k}) == int && args.{k} {cmp} {i}",
    "has(args.{k}) && type(args.{k}) == string && args.{k} == '{s}'",
    "true",
    "false",
]
CMPS = ["<", "<=", ">", ">=", "==", "!="]
PARAMS = {"k": KEYS, "cmp": CMPS, "i": ["0", "1", "2", "3", "10", "-1", "1000"],
          "s": ["x", "a", "abc", "prod", "ok", "3", "", "b", "é"],
          "f": ["1.5", "3.0", "0.0", "-2.5", "1e300", "-0.0"],
          "lit": ["true", "false", "null", "1u", "1.0", "'x'", "[]", "{}"]}


def _expand(template: str, **override: list[str]) -> list[str]:
    params = {**PARAMS, **override}
    names = sorted({name for _, name, _, _ in string.Formatter().parse(template) if name})
    return [template.format(**dict(zip(names, combo, strict=True)))
            for combo in itertools.product(*(params[n] for n in names))]


# Every atom spelled out once, so that drawing one costs Hypothesis a single choice. "Safe" atoms
# cannot error on any action; drawing them often lets the combined (no error) path run too.
ATOMS = [atom for template in ATOM_TEMPLATES for atom in _expand(template)]
SAFE_ATOMS = [atom for template in SAFE_TEMPLATES for atom in _expand(template)]
SIMPLE_ATOMS = [atom for template in SIMPLE_TEMPLATES
                for atom in _expand(template, k=["a", "n", "s", "x"])]
ATOM_POOLS = {"all": st.one_of(st.sampled_from(ATOMS), st.sampled_from(SAFE_ATOMS)),
              "simple": st.sampled_from(SIMPLE_ATOMS)}


def test_every_atom_is_a_valid_condition() -> None:
    bad = [(atom, err) for atom in ATOMS + SAFE_ATOMS + SIMPLE_ATOMS
           if (err := check_condition(atom)) is not None]
    assert not bad


# Condition shapes over atoms A, B, C: all valid CEL whatever the atoms are.
SHAPES = ["{0}", "{0}", "{0}", "!({0})", "{0} && {1}", "{0} || {1}", "({0} || {1}) && {2}",
          "!({0} && {1}) || {2}", "{0} || !({1} || {2})", "({0}) == ({1})"]


@st.composite
def conditions(draw: st.DrawFn, pool: str = "all") -> str:
    shape = draw(st.sampled_from(SHAPES))
    return shape.format(*(draw(ATOM_POOLS[pool]) for _ in range(shape.count("{"))))


@st.composite
def when_texts(draw: st.DrawFn, pool: str) -> str:
    """A condition, sometimes laid out the way people write them (line comments, new lines)."""
    cond = draw(conditions(pool))
    layout = draw(st.sampled_from(["plain"] * 8 + ["comment", "newline"]))
    if layout == "comment":
        return f"{cond} // checked by security"
    if layout == "newline":
        return f"\n  {cond}\n"
    return cond


@st.composite
def rules(draw: st.DrawFn, index: int, pool: str) -> dict[str, Any]:
    effect = draw(st.sampled_from(EFFECTS))
    rule: dict[str, Any] = {"id": f"r{index}", "effect": effect}
    stage = draw(st.sampled_from([None, None, None, "pre_tool", *STAGES]))
    if stage is not None:
        rule["stage"] = stage
    if draw(st.booleans()):
        rule["tools"] = draw(st.lists(st.sampled_from(TOOL_GLOBS), min_size=1, max_size=3))
    if draw(st.integers(0, 3)) == 0:
        rule["agents"] = draw(st.lists(st.sampled_from(AGENT_GLOBS), min_size=1, max_size=2))
    if draw(st.integers(0, 4)) > 0:
        rule["when"] = draw(when_texts(pool))
    if effect == "redact":
        root = "result" if stage == "post_tool" else "args"
        rule["redact"] = [f"{root}.secret"]
    return rule


@st.composite
def policy_texts(draw: st.DrawFn) -> str:
    n = draw(st.integers(0, 7))
    pool = draw(st.sampled_from(["all", "simple"]))
    doc = {"version": 1, "name": "fuzz",
           "default": draw(st.sampled_from(["deny", "deny", "allow", "require_approval"])),
           "rules": [draw(rules(i, pool)) for i in range(n)]}
    return json.dumps(doc)  # JSON is YAML


# Argument values: scalars of every CEL kind and some that CEL cannot hold (beyond int64), plus
# nested lists and maps. A fixed pool keeps generation cheap; dictionaries over it vary the rest.
BIG = [2**62, -(2**63), 2**63 - 1, 2**63, 2**64, 2**70, -(2**70)]
SCALARS: list[Any] = [*range(-2, 13), 1000, 2**31, *BIG, "x", "a", "abc", "ABC", "ａｂｃ", "3",
                      "12", "", " a ", "a\u200bbc", "https://Example.COM/p",
                      "http://user@evil.example:8080/x", "a@b.c", "prod", "ok", "send_email",
                      "b", "é", "Z", "1.0", 0.0, -0.0, 1.0, 2.0, 1.5, -2.5, 1e300, 3.0, 10.0,
                      float("nan"), float("inf"), float("-inf"), True, False, None]
VALUES: list[Any] = [*SCALARS, [], {}, [1, 2], ["x", 3], [2**70], [[1, "x"], {"k": 3}],
                     {"k": 1}, {"k": "x"}, {"k": 2**64}, {"a": {"b": ["x", 3]}}, {"url": "a"},
                     ("x", 3), [None, True], {"secret": "s3cret", "k": [1, 2, 3]},
                     {"a": 1.0}, {"a": 3, "s": "x"}, {"k": None}, {"a": True}, {1: "int key"}]
values = st.sampled_from(VALUES)


_TYPICAL = {
    "a": st.sampled_from([-1, 0, 1, 2, 3, 10, 1000, 1.5, 3.0, 2**63]),
    "n": st.sampled_from([-1, 0, 1, 3, 10, 2**62, 2**70]),
    "d": st.sampled_from([0, 1, 2, -1]),
    "s": st.sampled_from(["x", "a", "abc", "ABC", "prod", "3", "ok", "", "b", "é"]),
    "url": st.sampled_from(["https://Example.COM/p", "example.com", "a@example.com", "x"]),
    "secret": st.sampled_from(["s3cret", 1]),
    "m": st.sampled_from([{"a": 1}, {"k": "x"}, {"a": 3.0, "s": "prod"}, {"a": 2**64}, [],
                          {"a": 0, "s": "x", "n": 1}]),
}
TYPICAL_ARGS = st.one_of(
    st.fixed_dictionaries({}, optional=_TYPICAL),
    st.fixed_dictionaries({k: _TYPICAL[k] for k in ("a", "n", "s", "m")},
                          optional={k: _TYPICAL[k] for k in ("d", "url", "secret")}),
)


@st.composite
def actions(draw: st.DrawFn) -> dict[str, Any]:
    args = draw(TYPICAL_ARGS)
    if draw(st.booleans()):
        args.update(draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=4)))
    return {
        "stage": draw(st.sampled_from(["pre_tool"] * 4 + STAGES)),
        "tool": draw(st.sampled_from(ACTION_TOOLS)),
        "agent": draw(st.sampled_from(AGENT_IDS)),
        "args": args,
        "context": draw(st.sampled_from([{}, {}, {"env": "prod"}, {"env": "dev"}, {"env": 1},
                                         {"env": None}])),
        "result": draw(values),
    }


# -- comparison ------------------------------------------------------------------------------

_ERR_ID = re.compile(r"^rule '([^']*)': ")
_DECIDING_ORDER = ["deny", "require_approval", "allow"]


def _data(tool: str, act: dict[str, Any]) -> dict[str, Any]:
    """The activation the kernel builds (``Kernel._data``) for these facts."""
    return {"tool": tool, "args": act["args"], "agent": {"id": act["agent"]},
            "session": {"id": "", "labels": []}, "context": act["context"],
            "result": act["result"]}


def _evaluated_effects(verdict_effect: str, decided_by_rule: bool) -> set[str]:
    """The effects whose rules the optimised evaluator must have evaluated (its docstring:
    later tiers are not evaluated once an earlier one decides; obligations on allow and on
    require_approval)."""
    if not decided_by_rule:
        out = set(_DECIDING_ORDER)
    else:
        out = set(_DECIDING_ORDER[: _DECIDING_ORDER.index(verdict_effect) + 1])
    if verdict_effect in ("allow", "require_approval"):
        out |= {"redact", "audit"}
    return out


def _kernel_action(act: dict[str, Any]) -> bastion.Action:
    return bastion.Action(tool=act["tool"], args=act["args"], stage=act["stage"],
                          agent={"id": act["agent"]}, context=act["context"], result=act["result"])


def check_action(policy_text: str, act: dict[str, Any], compiled: Any, kernel: Any) -> None:
    policy = compiled.policy
    stage = Stage(act["stage"])
    raw = act["tool"]
    tool = "" if raw in (None, "") else reference_canonical_tool(raw)
    if raw:
        assert canonical_tool(raw) == tool, ascii(raw)
    if tool is None or (tool == "" and stage in (Stage.PRE_TOOL, Stage.POST_TOOL)):
        d = kernel.evaluate(_kernel_action(act))
        assert (d.effect, d.code) == ("deny", "invalid_tool" if tool is None else "missing_tool")
        return
    data = _data(tool, act)
    ref = reference_evaluate(policy, stage, tool, act["agent"], data)
    got = evaluate(compiled, stage, tool, act["agent"], data)
    where = f"\npolicy: {policy_text}\naction: {act!r}\nreference: {ref}\noptimised: {got}"

    assert got.effect.value == ref.effect, "effect" + where
    assert got.rule_ids == ref.rule_ids, "deciding rule ids" + where
    assert got.default_applied == ref.default_applied, "default" + where
    assert sorted(cr.rule.id for cr in got.obligations) == sorted(ref.obligations), \
        "obligations" + where
    # Errors, soundly: the optimised evaluator reports exactly the errors of the effects it
    # evaluated, and never an error the reference does not see.
    got_ids = []
    for message in got.errors:
        m = _ERR_ID.match(message)
        assert m is not None, f"error without a rule id: {message!r}" + where
        got_ids.append(m.group(1))
    ref_ids = [rid for rid, _effect, _msg in ref.errors]
    assert set(got_ids) <= set(ref_ids), "errors not seen by the reference" + where
    assert len(got_ids) == len(set(got_ids)), "an error recorded twice" + where
    evaluated = _evaluated_effects(ref.effect, not ref.default_applied)
    expected = {rid for rid, effect, _msg in ref.errors if effect in evaluated}
    assert set(got_ids) == expected, "errors of the evaluated effects" + where

    d = kernel.evaluate(_kernel_action(act))
    where += f"\nkernel: {d!r}"
    assert d.effect == ref.effect, "kernel effect" + where
    assert d.rule_ids == ref.rule_ids, "kernel rule ids" + where
    assert bool(d.errors) == bool(got.errors), "kernel errors" + where
    if d.effect == "allow":
        assert sorted(o.split(":", 1)[1] for o in d.obligations) == sorted(ref.obligations), \
            "kernel obligations" + where
    if d.effect == "require_approval":
        assert d.approval_id is not None, "require_approval without an approval id" + where


@settings(max_examples=1800, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(policy_text=policy_texts(), acts=st.lists(actions(), min_size=1, max_size=4))
def test_optimised_evaluator_and_kernel_agree_with_reference(policy_text: str,
                                                             acts: list[dict[str, Any]]) -> None:
    policy = parse_policy(policy_text)
    compiled = compile_policy(policy)
    with bastion.Kernel(policy, audit=None) as kernel:
        for act in acts:
            check_action(policy_text, act, compiled, kernel)
            # the candidate cache must not change an answer: ask again
            check_action(policy_text, act, compiled, kernel)


# -- targeted cases the generator found or that are easy to miss ------------------------------

def _decide(policy_text: str, tool: str, args: dict[str, Any], agent: str = "agent-1",
            stage: str = "pre_tool") -> None:
    policy = parse_policy(policy_text)
    compiled = compile_policy(policy)
    with bastion.Kernel(policy, audit=None) as kernel:
        check_action(policy_text, {"stage": stage, "tool": tool, "agent": agent, "args": args,
                                   "context": {}, "result": None}, compiled, kernel)


def test_line_comment_in_when_of_two_rules_with_one_effect() -> None:
    """A ``// comment`` is valid CEL and the loader accepts it; combining two such conditions
    into one tier program must not break."""
    text = json.dumps({"version": 1, "rules": [
        {"id": "big", "when": "args.a > 10 // too large", "effect": "deny"},
        {"id": "neg", "when": "args.a < 0 // negative", "effect": "deny"},
        {"id": "ok", "effect": "allow"},
    ]})
    _decide(text, "transfer", {"a": 5})
    _decide(text, "transfer", {"a": 50})


@pytest.mark.parametrize("args", [{"n": 2**70}, {"n": -(2**70)}, {"n": 2**63}, {"n": 2**63 - 1},
                                  {"n": 1, "d": 0}, {}, {"n": "x"}, {"n": [1, {"m": 2**64}]}])
def test_error_and_big_int_cases(args: dict[str, Any]) -> None:
    text = json.dumps({"version": 1, "rules": [
        {"id": "a1", "when": "args.n > 5", "effect": "allow"},
        {"id": "a2", "when": "args.n / args.d > 1", "effect": "allow"},
        {"id": "q1", "when": "args.n < -5", "effect": "require_approval"},
        {"id": "o1", "when": "leaves(args).exists(v, v == 3)", "effect": "audit"},
    ]})
    _decide(text, "transfer", args)


def _deepest(make: Any) -> int:
    """The largest ``n`` for which ``make(n)`` is still a valid condition (the parser's
    recursion limit, whatever this CEL build sets it to)."""
    n = 1
    while check_condition(make(n + 1)) is None:
        n += 1
    return n


def test_conditions_at_the_parser_nesting_limit_combine() -> None:
    """Each condition is checked alone at load time; the policy is valid, so deciding must not
    fail when conditions are combined into one program."""
    def total(n: int) -> str:
        return " + ".join(["args.a"] * n) + " > 100"

    text = json.dumps({"version": 1, "rules": [
        {"id": "sum", "when": total(_deepest(total)), "effect": "deny"},
        {"id": "neg", "when": "args.a < 0", "effect": "deny"},
        {"id": "ok", "effect": "allow"},
    ]})
    _decide(text, "transfer", {"a": 1})
    _decide(text, "transfer", {"a": 10})


def test_distinct_integers_beyond_64_bits_are_not_equal() -> None:
    """DESIGN.md: an overflow is an error, and an erroring deny condition matches. Rounding
    integers beyond 64 bits to doubles instead makes two different amounts equal, so a deny rule
    on ``args.a != args.b`` is silently skipped."""
    text = json.dumps({"version": 1, "rules": [
        {"id": "mismatch", "when": "args.amount != args.confirmed", "effect": "deny"},
        {"id": "ok", "effect": "allow"},
    ]})
    with bastion.Kernel.from_text(text, audit=False) as kernel:
        for a, b in [(2**70, 2**70 + 1), (2**64, 2**64 + 1), (-(2**70), -(2**70) - 1)]:
            d = kernel.evaluate(bastion.Action(tool="transfer",
                                               args={"amount": a, "confirmed": b}))
            assert d.effect == "deny", (a, b, d)


@pytest.mark.parametrize("where", ["args", "context", "result"])
def test_a_nul_byte_never_lets_a_condition_see_a_cut_short_string(where: str) -> None:
    """The CEL binding ends strings at NUL, so "ls\\0; rm -rf /" would look like "ls". Neither
    an allow rule nor a deny rule may act on the shortened value."""
    stage = "post_tool" if where == "result" else "pre_tool"
    path = "result.cmd" if where == "result" else f"{where}.cmd"
    text = json.dumps({"version": 1, "rules": [
        {"id": "only-ls", "stage": stage, "when": f"{path} != 'ls'", "effect": "deny"},
        {"id": "ls", "stage": stage, "when": f"{path} == 'ls'", "effect": "allow"},
    ]})
    value = {"cmd": "ls\x00; rm -rf /"}
    fields: dict[str, Any] = {"args": {}, "context": {}, "result": None, where: value}
    with bastion.Kernel.from_text(text, audit=False) as kernel:
        for _ in range(2):  # and again, once any per-candidate fast path is built
            d = kernel.evaluate(bastion.Action(tool="shell", stage=stage, **fields))
            assert d.effect == "deny", d
            assert "only-ls" in d.rule_ids or d.code != "policy", d
        ok = kernel.evaluate(bastion.Action(tool="shell", stage=stage,
                                            **{**fields, where: {"cmd": "ls"}}))
        assert (ok.effect, ok.rule_ids) == ("allow", ("ls",)), ok
