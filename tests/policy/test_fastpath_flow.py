"""The Python fast path on the information-flow pack (``policies/flow-default.yaml``): every
condition of the pack is in the subset, and wherever the Python function answers it gives CEL's
answer, on random flow facts both well-formed and odd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.policy import Stage, compile_policy
from bastion.policy._cel import environment
from bastion.policy._fastdata import clean
from bastion.policy._fastpath import simple, values_function
from bastion.policy._loader import load_policy

PACK = Path(__file__).resolve().parents[2] / "policies" / "flow-default.yaml"
COMPILED = compile_policy(load_policy(PACK))
FLOW = {cr.rule.id: cr.program for cr in COMPILED.rules if cr.program is not None}
PRE_TOOL = [cr.program for cr in COMPILED.rules
            if cr.program is not None and cr.rule.stage is Stage.PRE_TOOL]

# More conditions in the same forms: exists over a list, all, map keys, nested &&/||/!, an
# index that may miss, a path as a condition, a variable that may not fit its declared type.
EXTRA = [
    'session.labels.exists(l, l == "untrusted")',
    'session.labels.all(l, l != "secret")',
    'tool_info.sinks.all(s, s in arg_labels)',
    'tool_info.sinks.exists(s, "untrusted" in arg_labels[s])',
    'tool_info.content.exists(c, c in arg_labels && "untrusted_identifier" in arg_labels[c])',
    'arg_labels.all(k, "trusted" in arg_labels[k] || !("untrusted" in arg_labels[k]))',
    'arg_labels.exists(k, k == "url") && !tool_info.side_effects',
    '!(tool_info.side_effects || tool_info.declared) && tool_info.class != "read"',
    '"untrusted" in arg_labels["recipient"] || tool_info.declared',
    '"recipient" in arg_labels && !("secret" in arg_labels["recipient"])',
    'tool_info.exists(f, f == "sinks") && !("content" in tool_info)',
    'tool_info.exists(f, tool_info[f] == true)',
    'tool_info["class"] in ["egress", "code"] || tool_info.side_effects',
    'has(tool_info.sinks) && tool_info.sinks.all(s, !(s in arg_labels) || '
    '"trusted" in arg_labels[s])',
    'tool == "send_money" && arg_labels.exists(k, "untrusted" in arg_labels[k])',
    'tool_info.side_effects',
    '!tool_info.declared',
]
EXTRA_PROGRAMS = {source: environment().compile(source) for source in EXTRA}


def cel(program: Any, view: dict[str, Any]) -> Any:
    """CEL's answer: a value, or ``"error"``."""
    try:
        return program.eval(data=view).plain_value()
    except Exception:
        return "error"


def answers(program: Any, view: dict[str, Any]) -> tuple[bool | None, Any]:
    fn = simple(program)
    assert fn is not None
    return fn(view), cel(program, view)


# -- every condition of the pack is in the subset -------------------------------------------------
def test_every_condition_of_the_pack_compiles() -> None:
    assert FLOW
    for rule_id, program in FLOW.items():
        assert simple(program) is not None, rule_id
    assert values_function(PRE_TOOL, folds=True) is not None
    assert values_function(PRE_TOOL) is None  # the kernel leaves exists/all to CEL (faster)


@pytest.mark.parametrize("source", EXTRA)
def test_every_extra_condition_compiles(source: str) -> None:
    assert simple(EXTRA_PROGRAMS[source]) is not None


@pytest.mark.parametrize("source", [
    'arg_labels.exists(k, arg_labels[k].exists(l, l == "secret"))',  # one inside another
    'arg_labels.exists_one(k, "secret" in arg_labels[k])',
    'tool_info.sinks.filter(s, s in arg_labels).size() > 0',
    'tool_info.sinks.map(s, s in arg_labels).exists(b, b)',
    '1 in tool_info.sinks',
    'tool_info.sinks[0] == "recipient"',
    'tool_info.sinks.exists(s, s == "recipient" + "")',
])
def test_outside_the_subset(source: str) -> None:
    assert simple(environment().compile(source)) is None


# -- exact answers where CEL's rules are subtle ---------------------------------------------------
RECIPIENT_UNTRUSTED = {"arg_labels": {"recipient": ["untrusted"]},
                       "tool_info": {"sinks": ["missing", "recipient"]}}
RECIPIENT_TRUSTED = {"arg_labels": {"recipient": ["trusted"]},
                     "tool_info": {"sinks": ["missing", "recipient"]}}


@pytest.mark.parametrize(("source", "view", "expected"), [
    # exists is true when any element is, even though another errs (a missing key)
    ('tool_info.sinks.exists(s, "untrusted" in arg_labels[s])', RECIPIENT_UNTRUSTED, True),
    ('tool_info.sinks.exists(s, "untrusted" in arg_labels[s])', RECIPIENT_TRUSTED, None),
    # all is false when any element is, even though another errs
    ('tool_info.sinks.all(s, "untrusted" in arg_labels[s])', RECIPIENT_TRUSTED, False),
    ('tool_info.sinks.all(s, "untrusted" in arg_labels[s])', RECIPIENT_UNTRUSTED, None),
    # false && error is false; a missing key alone is CEL's error
    ('tool_info.declared && "untrusted" in arg_labels["x"]',
     {"tool_info": {"declared": False}, "arg_labels": {}}, False),
    ('tool_info.declared && "untrusted" in arg_labels["x"]',
     {"tool_info": {"declared": True}, "arg_labels": {}}, None),
    # a path that is not a bool is no condition
    ('tool_info.side_effects || false', {"tool_info": {"side_effects": 1}}, None),
    ('tool_info.side_effects || true', {"tool_info": {"side_effects": 1}}, True),
    # `in` on a list that is not only strings needs heterogeneous equality: left to CEL
    ('"a" in tool_info.sinks', {"tool_info": {"sinks": ["a", 1]}}, None),
    ('"a" in tool_info.sinks', {"tool_info": {"sinks": "abc"}}, None),
    ('"a" in tool_info.sinks', {"tool_info": {"sinks": {"a": 1}}}, True),
    # a variable that does not fit its declared type errs wherever it is read
    ('tool == "x"', {"tool": 1}, None),
    ('has(arg_labels.a)', {"arg_labels": {"a": 1}}, None),
    ('"a" in arg_labels', {"arg_labels": {"a": ["x", 1]}}, None),
    ('false && "a" in arg_labels', {"arg_labels": []}, False),
    ('"a" in args', {"args": ["a"]}, None),
    # an iteration variable shadows the variable of the same name
    ('tool_info.sinks.exists(tool_info, tool_info == "a")', {"tool_info": {"sinks": ["a"]}}, True),
])
def test_exact_answers(source: str, view: dict[str, Any], expected: bool | None) -> None:
    py, reference = answers(environment().compile(source), view)
    assert py is expected
    if expected is not None:
        assert reference is expected


# -- CEL's iteration budget (9,999 steps per evaluation, and running out aborts it) ---------------
@pytest.mark.parametrize(("source", "sizes", "answered"), [
    ("result.a.exists(x, x == -1)", (5000, 0), True),
    ("result.a.exists(x, x == -1)", (5001, 0), False),
    ("result.a.exists(x, x == -1)", (10000, 0), False),
    ("result.a.exists(x, x == -1) && false", (10000, 0), False),  # no false && absorbs that
    ("result.a.all(x, x != -1) || true", (10000, 0), False),
    ("result.a.exists(x, x == -1) || result.b.exists(x, x == -1)", (2500, 2500), True),
    ("result.a.exists(x, x == -1) || result.b.exists(x, x == -1)", (5000, 4999), False),
    # the first is false, so neither CEL nor Python runs the second
    ("result.a.exists(x, x == -1) && result.b.exists(x, x == -1)", (2500, 7499), True),
    ("result.a.exists(x, x == 0) && result.b.exists(x, x == -1)", (2500, 7499), False),
])
def test_iteration_budget(source: str, sizes: tuple[int, int], answered: bool) -> None:
    view = {"result": {"a": list(range(sizes[0])), "b": list(range(sizes[1]))}}
    py, reference = answers(environment().compile(source), view)
    assert (py is not None) is answered
    if py is not None:
        assert py is reference


# -- differential: random flow facts --------------------------------------------------------------
ARGS = ["recipient", "amount", "body", "url", "x"]
LABELS = ["trusted", "untrusted", "unknown", "secret", "untrusted_identifier", "internal", "user",
          "tool:x", "selected"]
CLASSES = ["egress", "write", "read", "code", "admin"]
ODD: st.SearchStrategy[Any] = st.sampled_from([1, 0, 2.5, None, "", "yes", True, False, [], {}])

label_lists = st.lists(st.sampled_from(LABELS), max_size=4, unique=True)
name_lists = st.lists(st.sampled_from(ARGS), max_size=4, unique=True)


def odd_list(items: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A list of ``items`` with now and then a value of another kind in it."""
    return st.lists(st.one_of(items, items, items, ODD), max_size=4)


@st.composite
def well_formed(draw: st.DrawFn) -> dict[str, Any]:
    """Flow facts as the kernel builds them."""
    return {
        "tool": draw(st.sampled_from(["send_money", "run_code", "read_inbox"])),
        "arg_labels": draw(st.dictionaries(st.sampled_from(ARGS), label_lists, max_size=4)),
        "tool_info": {"class": draw(st.sampled_from(CLASSES)), "side_effects": draw(st.booleans()),
                      "sinks": draw(name_lists), "content": draw(name_lists),
                      "declared": draw(st.booleans())},
        "session": {"id": "s", "labels": draw(label_lists)},
    }


@st.composite
def odd(draw: st.DrawFn) -> dict[str, Any]:
    """Flow facts with odd types and missing keys here and there."""
    view = draw(well_formed())
    labels = st.one_of(label_lists, label_lists, label_lists, odd_list(st.sampled_from(LABELS)),
                       ODD)
    view["arg_labels"] = draw(st.dictionaries(st.sampled_from(ARGS), labels, max_size=4)
                              | st.sampled_from([[], "recipient", None]))
    info = {
        "class": draw(st.sampled_from(CLASSES) | ODD),
        "side_effects": draw(st.booleans() | ODD),
        "declared": draw(st.booleans() | ODD),
        "sinks": draw(st.one_of(name_lists, odd_list(st.sampled_from(ARGS)), ODD,
                                st.dictionaries(st.sampled_from(ARGS), ODD, max_size=2))),
        "content": draw(st.one_of(name_lists, odd_list(st.sampled_from(ARGS)), ODD)),
    }
    for key in draw(st.lists(st.sampled_from(sorted(info)), max_size=2, unique=True)):
        del info[key]
    view["tool_info"] = draw(st.just(info) | st.just(info) | st.sampled_from([[], "x", None]))
    view["session"] = {"id": "s", "labels": draw(st.one_of(label_lists, label_lists,
                                                           odd_list(st.sampled_from(LABELS)),
                                                           ODD))}
    view["tool"] = draw(st.sampled_from(["send_money", "run_code"]) | ODD)
    for key in draw(st.lists(st.sampled_from(sorted(view)), max_size=1)):
        del view[key]
    return view


ALL_PROGRAMS = {**FLOW, **EXTRA_PROGRAMS}
FUNCTIONS = {name: simple(program) for name, program in ALL_PROGRAMS.items()}
PRE_TOOL_VALUES = values_function(PRE_TOOL, folds=True)
COMBINED = environment().compile("[" + ", ".join(
    f"({cr.rule.when}\n)" for cr in COMPILED.rules
    if cr.program is not None and cr.rule.stage is Stage.PRE_TOOL) + "]")
DIFFERENTIAL = settings(max_examples=600, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow])


@DIFFERENTIAL
@given(view=odd())
def test_python_agrees_with_cel_where_it_answers(view: dict[str, Any]) -> None:
    assert clean(view)
    for name, program in ALL_PROGRAMS.items():
        fn = FUNCTIONS[name]
        assert fn is not None
        py = fn(view)
        if py is not None:
            assert py is cel(program, view), name
    assert PRE_TOOL_VALUES is not None
    positions = PRE_TOOL_VALUES(view)
    if positions is not None:
        values = cel(COMBINED, view)
        assert positions == tuple(i for i, v in enumerate(values) if v is True)


@DIFFERENTIAL
@given(view=well_formed())
def test_python_answers_the_pack_on_well_formed_facts(view: dict[str, Any]) -> None:
    assert clean(view)
    for rule_id, program in FLOW.items():
        fn = FUNCTIONS[rule_id]
        assert fn is not None
        py = fn(view)
        assert py is not None, rule_id
        assert py is cel(program, view), rule_id
    for source, program in EXTRA_PROGRAMS.items():
        fn = FUNCTIONS[source]
        assert fn is not None
        py = fn(view)
        if py is not None:
            assert py is cel(program, view), source
    assert PRE_TOOL_VALUES is not None
    positions = PRE_TOOL_VALUES(view)
    assert positions is not None
    values = cel(COMBINED, view)
    assert positions == tuple(i for i, v in enumerate(values) if v is True)
