"""Policy test files: cases of action → expected decision, run by ``bastion test`` and by the
conformance corpus under ``tests/conformance/``.

A file (YAML)::

    policy: payments.yaml          # path relative to this file, or
    policy_text: |                 # the policy inline
      version: 1 ...
    agents:                        # optional facts for agent ids (trust, ring, roles)
      agent-1: {trust: 700, roles: [payments], ring: 2}
    catalog_text: |                # optional tool catalog (or catalog: a path)
      version: 1
      tools: {send_email: {class: egress}}
    rings: true                    # enforce execution rings (ring from the agents' facts)
    elevations:                    # optional time-boxed ring grants (expired: true = lapsed)
      agent-1: {ring: 1, expired: false}
    cases:
      - name: large transfers need approval
        action: {tool: transfer, args: {amount: 5000}, agent: {id: agent-1}}
        expect: require_approval   # or a mapping:
        # expect: {effect: deny, rule_ids: [big], errors: true, code: policy,
        #          reason: "substring", args: {...redacted args...}}
        repeat: 1                  # evaluate N times; the expectation is on the last

Cases in one file share one kernel (in-memory state), so sequences such as rate limits can be
tested in order. Every mistake in the file is a ``PolicyError`` with its position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion._errors import PolicyError
from bastion.kernel import Action, Decision, Kernel
from bastion.policy import parse_policy
from bastion.policy._cedar import load_any
from bastion.policy._yaml import Located, LocatedList, read_source, read_yaml

_FILE_KEYS = {"policy", "policy_text", "agents", "cases", "description", "catalog",
              "catalog_text", "rings", "elevations"}
_CASE_KEYS = {"name", "action", "expect", "repeat", "description"}
_ACTION_KEYS = {"tool", "stage", "args", "agent", "session", "context", "result"}
_EXPECT_KEYS = {"effect", "rule_ids", "errors", "code", "reason", "args", "result"}


@dataclass(frozen=True, slots=True)
class CaseResult:
    file: str
    name: str
    line: int
    passed: bool
    problems: tuple[str, ...]
    decision: Decision | None


class _StaticFacts:
    def __init__(self, facts: Mapping[str, Mapping[str, Any]]):
        self.facts = facts

    def __call__(self, agent_id: str) -> Mapping[str, Any]:
        return self.facts.get(agent_id, {})


def run_file(path: str | Path) -> list[CaseResult]:
    """Run every case of one test file. Raises ``PolicyError`` for a malformed file or policy."""
    p = Path(path)
    source = read_source(p)
    doc = read_yaml(source, str(p))
    where = str(p)
    if not isinstance(doc, Located):
        raise PolicyError("a policy test file must be a mapping", path=where, line=1, column=1)
    _check_keys(doc, _FILE_KEYS, "test file", where)
    if ("policy" in doc) == ("policy_text" in doc):
        raise PolicyError("give exactly one of 'policy' (a path) or 'policy_text'", path=where,
                          line=doc.pos.line, column=doc.pos.column)
    if "policy" in doc:
        policy = load_any(p.parent / str(doc["policy"]))
    else:
        vp = doc.value_pos["policy_text"]
        try:
            policy = parse_policy(str(doc["policy_text"]), path=f"{where}#policy_text")
        except PolicyError as exc:  # point into the test file: block text starts a line later,
            line = vp.line + exc.line  # and its lines are indented there (by its first line)
            lines = source.splitlines()[vp.line:]
            first = next((t for t in lines if t.strip()), "")
            indent = len(first) - len(first.lstrip(" ")) if exc.column else 0
            raise PolicyError(exc.message, path=where, line=line,
                              column=exc.column + indent if exc.column else exc.column) from None
    agents = doc.get("agents") or {}
    if not isinstance(agents, dict) or not all(isinstance(v, dict) for v in agents.values()):
        vp = doc.value_pos["agents"]
        raise PolicyError("'agents' must map agent ids to their facts", path=where,
                          line=vp.line, column=vp.column)
    facts = _StaticFacts(dict(agents))
    catalog = None
    if "catalog" in doc or "catalog_text" in doc:
        from bastion.flow import load_catalog, parse_catalog

        catalog = (load_catalog(p.parent / str(doc["catalog"])) if "catalog" in doc
                   else parse_catalog(str(doc["catalog_text"]), path=f"{where}#catalog_text"))
    cases = doc.get("cases")
    if not isinstance(cases, LocatedList) or not cases:
        raise PolicyError("'cases' must be a non-empty list", path=where, line=doc.pos.line,
                          column=doc.pos.column)
    results = []
    with Kernel(policy, audit=None, agent_facts=facts, catalog=catalog) as kernel:
        if doc.get("rings"):
            _rings(kernel, facts, doc, where)
        for case, pos in zip(cases, cases.item_pos, strict=True):
            if not isinstance(case, Located):
                raise PolicyError("a case must be a mapping", path=where, line=pos.line,
                                  column=pos.column)
            results.append(_run_case(kernel, case, where))
    return results


def _rings(kernel: Kernel, facts: _StaticFacts, doc: Located, where: str) -> None:
    import json
    import time

    from bastion.runtime._rings import RingGuard

    guard = RingGuard(kernel.catalog, ring_of=lambda a: facts(a).get("ring"), state=kernel.state)
    kernel.add_guard(guard)
    elevations = doc.get("elevations") or {}
    bad = not isinstance(elevations, dict) or not all(
        isinstance(g, dict) and type(g.get("ring")) is int for g in elevations.values())
    if bad:
        vp = doc.value_pos.get("elevations", doc.pos)
        raise PolicyError("'elevations' must map agent ids to {ring: N, expired: bool}",
                          path=where, line=vp.line, column=vp.column)
    for agent, grant in elevations.items():
        expires = time.time() + (-60 if grant.get("expired") else 3600)
        kernel.state.set_flag(f"elevation:{agent}", json.dumps(
            {"agent": agent, "ring": grant["ring"], "expires": expires,
             "approved_by": "conformance", "reason": "test"}))


def _check_keys(node: Located, allowed: set[str], what: str, where: str) -> None:
    for key in node:
        if key not in allowed:
            kp = node.key_pos[key]
            raise PolicyError(f"unknown key {key!r} in {what}", path=where, line=kp.line,
                              column=kp.column)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _run_case(kernel: Kernel, case: Located, where: str) -> CaseResult:
    _check_keys(case, _CASE_KEYS, "case", where)
    name = str(case.get("name", f"line {case.pos.line}"))
    raw = case.get("action")
    if not isinstance(raw, Located):
        raise PolicyError("a case needs an 'action' mapping", path=where, line=case.pos.line,
                          column=case.pos.column)
    _check_keys(raw, _ACTION_KEYS, "action", where)
    fields = {k: _plain(v) for k, v in raw.items()}
    action = Action(**{k: v for k, v in fields.items() if v is not None or k == "result"})
    expect = case.get("expect")
    if isinstance(expect, str):
        expect = {"effect": expect}
    if not isinstance(expect, Located | dict) or "effect" not in expect:
        raise PolicyError("a case needs 'expect' (an effect or a mapping with 'effect')",
                          path=where, line=case.pos.line, column=case.pos.column)
    if isinstance(expect, Located):
        _check_keys(expect, _EXPECT_KEYS, "expect", where)
        for key in ("rule_ids", "args"):
            value = expect.get(key)
            ok = isinstance(value, dict) if key == "args" else isinstance(value, list) and all(
                isinstance(x, str) for x in value)
            if key in expect and not ok:
                vp = expect.value_pos[key]
                raise PolicyError(f"'expect.{key}' must be a "
                                  + ("list of rule ids" if key == "rule_ids" else "mapping"),
                                  path=where, line=vp.line, column=vp.column)
        if "errors" in expect and not isinstance(expect["errors"], bool):  # "false" is truthy
            vp = expect.value_pos["errors"]
            raise PolicyError("'expect.errors' must be true or false", path=where,
                              line=vp.line, column=vp.column)
    repeat = case.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= 10_000:
        raise PolicyError("'repeat' must be an integer from 1 to 10000", path=where,
                          line=case.pos.line, column=case.pos.column)
    decision = None
    for _ in range(repeat):
        decision = kernel.evaluate(action)
    assert decision is not None
    problems = _compare(decision, _plain(dict(expect)))
    return CaseResult(where, name, case.pos.line, not problems, tuple(problems), decision)


def _same(got: Any, want: Any) -> bool:
    """Equal and of the same JSON types all the way down (``true`` is not ``1``, ``1.0`` is
    not ``1``), as a test means it."""
    if isinstance(want, dict):
        return isinstance(got, Mapping) and set(got) == set(want) \
            and all(_same(got[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list | tuple) and len(got) == len(want) \
            and all(_same(g, w) for g, w in zip(got, want, strict=True))
    return type(got) is type(want) and got == want


def _compare(d: Decision, expect: dict[str, Any]) -> list[str]:
    problems = []
    if d.effect != expect["effect"]:
        problems.append(f"effect: expected {expect['effect']!r}, got {d.effect!r}")
    if "rule_ids" in expect and list(d.rule_ids) != list(expect["rule_ids"]):
        problems.append(f"rule_ids: expected {expect['rule_ids']!r}, got {list(d.rule_ids)!r}")
    if "errors" in expect and bool(d.errors) != bool(expect["errors"]):
        want = "errors" if expect["errors"] else "no errors"
        problems.append(f"expected {want}, got {list(d.errors)!r}")
    if "code" in expect and d.code != expect["code"]:
        problems.append(f"code: expected {expect['code']!r}, got {d.code!r}")
    if "reason" in expect and not any(str(expect["reason"]) in r for r in d.reasons):
        problems.append(f"no reason contains {expect['reason']!r}: {list(d.reasons)!r}")
    if "args" in expect and (d.args is None or not _same(dict(d.args), expect["args"])):
        problems.append(f"args: expected {expect['args']!r}, got {d.args!r}")
    if "result" in expect and not _same(d.result, expect["result"]):
        problems.append(f"result: expected {expect['result']!r}, got {d.result!r}")
    return problems
