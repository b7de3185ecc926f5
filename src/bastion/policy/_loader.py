"""Strict loading of policy files (version 1) into frozen ``Policy`` values.

Every mistake is a ``PolicyError`` naming ``path:line:column``: unknown or misspelt keys, duplicate
ids, bad globs, unknown effects or stages, malformed limits, CEL syntax and type errors, undeclared
variables and conditions that are not boolean. Nothing is guessed or silently dropped.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Any, NoReturn

from bastion._canon import canonical_json
from bastion._errors import PolicyError
from bastion.policy._model import (
    Budgets,
    Effect,
    Location,
    Per,
    Policy,
    RateLimit,
    Rule,
    Stage,
)
from bastion.policy._yaml import Located, LocatedList, Pos, read_source, read_yaml

_TOP_KEYS = ("version", "name", "description", "default", "rules", "budgets")
_RULE_KEYS = (
    "id", "description", "stage", "tools", "agents", "when", "effect", "message",
    "limit", "per", "redact", "redact_pattern",
)
_BUDGET_KEYS = ("session_calls", "session_cost", "session_tokens", "max_repeats",
                "max_failures")
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")
_GLOB_CHARS = re.compile(r"[a-z0-9_\-.:/*?\[\]!]+")
_AGENT_GLOB = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
_LIMIT = re.compile(
    r"\s*(\d{1,9})\s*/\s*(\d{1,6})?\s*(s|sec|second|m|min|minute|h|hour|d|day)s?\s*", re.I
)
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
          "hour": 3600, "d": 86400, "day": 86400}
_REDACT_PATH = re.compile(r"(args|result)(\.([A-Za-z0-9_\-]+|\*))*")
_INDICATOR = re.compile(r"\|[+-]?([1-9])[+-]?\s*(?:#.*)?$")  # "when: |2": the block's indentation


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file. A missing or unreadable file is a ``PolicyError``."""
    return parse_policy(read_source(path), path=str(path))


def parse_policy(text: str, *, path: str = "<text>") -> Policy:
    """Validate policy ``text``; ``path`` is only used in error messages."""
    doc = read_yaml(text, path)
    if not isinstance(doc, Located):
        raise PolicyError("a policy must be a mapping with 'version' and 'rules'", path=path,
                          line=1, column=1)
    ctx = _Ctx(path, text)
    ctx.check_keys(doc, _TOP_KEYS, "policy")
    version = doc.get("version")
    if "version" not in doc:
        ctx.fail(doc.pos, "missing required key 'version'")
    if version != 1 or isinstance(version, bool):
        ctx.fail(doc.value_pos["version"], f"unsupported policy version {version!r} (expected 1)")
    name = ctx.string(doc, "name", default="policy")
    if "description" in doc:
        ctx.string(doc, "description")
    default = ctx.effect(doc, "default", Effect.DENY)
    warnings: list[str] = []
    if default not in (Effect.DENY, Effect.ALLOW, Effect.REQUIRE_APPROVAL):
        ctx.fail(doc.value_pos["default"], f"default must be deny, allow or require_approval, "
                                           f"not {default.value!r}")
    if default is Effect.ALLOW:
        p = doc.value_pos["default"]
        warnings.append(f"{path}:{p.line}:{p.column}: warning: 'default: allow' lets every "
                        "action no rule denies")
    rules_node = doc.get("rules", LocatedList())
    if not isinstance(rules_node, LocatedList):
        ctx.fail(doc.value_pos["rules"], "'rules' must be a list")
    rules: list[Rule] = []
    seen: dict[str, Pos] = {}
    for index, item in enumerate(rules_node):
        pos = rules_node.item_pos[index]
        if not isinstance(item, Located):
            ctx.fail(pos, f"rule {index + 1} must be a mapping")
        rule = _rule(ctx, item)
        if rule.id in seen:
            first = seen[rule.id]
            ctx.fail(item.value_pos["id"], f"duplicate rule id {rule.id!r} (first at line "
                                           f"{first.line})")
        seen[rule.id] = item.value_pos["id"]
        rules.append(rule)
        if rule.when and "host(" in rule.when and "xn--" in rule.when.casefold():
            ctx.fail(item.value_pos["when"], "host() gives IDNA hosts in Unicode, so an "
                     f"'xn--' spelling in rule {rule.id!r} would never equal it; write the "
                     "host as it reads ('банк.рф')")
    if default is not Effect.ALLOW:
        warnings.extend(_unanswered_stages(path, rules, default))
    budgets = _budgets(ctx, doc)
    digest = "sha256:" + hashlib.sha256(canonical_json(_strip(doc))).hexdigest()
    return Policy(version=1, name=name, default=default, rules=tuple(rules), budgets=budgets,
                  source=path, digest=digest, warnings=tuple(warnings))


def _unanswered_stages(path: str, rules: list[Rule], default: Effect) -> list[str]:
    """A warning for each of ``post_tool``, ``input`` and ``output`` that some rule decides but
    no unconditional allow covers for every tool: once a policy has a rule at that stage, every
    governed call is decided there, and what no rule allows gets the default (a ``post_tool``
    redaction for one tool then withholds every other tool's result)."""
    out = []
    for stage in (Stage.POST_TOOL, Stage.INPUT, Stage.OUTPUT):
        at = [r for r in rules if r.stage is stage]
        if at and not any(r.effect is Effect.ALLOW and r.when is None and "*" in r.tools
                          and "*" in r.agents for r in at):
            first = at[0].location or Location(path, 1, 1)
            out.append(f"{path}:{first.line}:{first.column}: warning: rules decide stage "
                       f"{stage.value!r} but none allows every tool there: what no rule allows "
                       f"is {default.value} by default (add a rule with tools: ['*'] and effect "
                       "allow at that stage if that is not meant)")
    return out


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


class _Ctx:
    def __init__(self, path: str, text: str = ""):
        self.path = path
        self.lines = text.splitlines()

    def inside(self, value: Pos, line: int, col: int, key: Pos | None = None) -> Pos:
        """The file position of ``line:col`` inside the scalar that starts at ``value``.

        Exact for single-line plain and quoted scalars (without escapes before the position)
        and for literal blocks (``|``); for folded and multi-line plain scalars, whose line
        breaks YAML rewrites, it is the scalar's start.
        """
        if value.style == "|":
            row = value.line + line  # the block's text starts on the line after the '|'
            # every line of it is indented as its first line that is not blank, or as an
            # indentation indicator says ("|2": the key's indentation and 2 more); the rest of
            # a line's indentation is the condition's own text
            header = self.lines[value.line - 1] if 0 < value.line <= len(self.lines) else ""
            indicator = _INDICATOR.search(header)
            if indicator is not None:  # counted from the mapping the key belongs to
                base = key.column - 1 if key is not None else len(header) - len(header.lstrip())
                indent = base + int(indicator.group(1))
            else:
                first = next((t for t in self.lines[value.line:row] if t.strip()), "")
                indent = len(first) - len(first.lstrip(" "))
            return Pos(row, indent + col)
        if line != 1 or value.style == ">":
            return value
        return Pos(value.line, value.column + col - 1 + (value.style in ("'", '"')))

    def fail(self, pos: Pos, message: str) -> NoReturn:
        raise PolicyError(message, path=self.path, line=pos.line, column=pos.column)

    def check_keys(self, node: Located, allowed: tuple[str, ...], what: str) -> None:
        for key in node:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.fail(node.key_pos[key], f"unknown key {key!r} in {what}{extra}")

    def string(self, node: Located, key: str, default: str = "") -> str:
        if key not in node:
            return default
        value = node[key]
        if not isinstance(value, str):
            self.fail(node.value_pos[key], f"{key!r} must be a string")
        return str(value)

    def effect(self, node: Located, key: str, default: Effect | None) -> Effect:
        if key not in node:
            if default is None:
                self.fail(node.pos, f"missing required key {key!r}")
            return default
        value = node[key]
        try:
            return Effect(value)
        except ValueError:
            choices = ", ".join(e.value for e in Effect)
            self.fail(node.value_pos[key], f"unknown effect {value!r} (one of {choices})")
            raise  # unreachable: fail() raises

    def str_list(self, node: Located, key: str) -> tuple[list[str], list[Pos]] | None:
        if key not in node:
            return None
        value = node[key]
        if isinstance(value, str):
            return [value], [node.value_pos[key]]
        if not isinstance(value, LocatedList) or not value:
            self.fail(node.value_pos[key], f"{key!r} must be a non-empty list of strings")
        for item, pos in zip(value, value.item_pos, strict=True):
            if not isinstance(item, str):
                self.fail(pos, f"every entry of {key!r} must be a string")
        return list(value), list(value.item_pos)


def _rule(ctx: _Ctx, node: Located) -> Rule:
    ctx.check_keys(node, _RULE_KEYS, "rule")
    if "id" not in node:
        ctx.fail(node.pos, "rule is missing required key 'id'")
    rid = node["id"]
    if not isinstance(rid, str) or _ID.fullmatch(rid) is None:
        ctx.fail(node.value_pos["id"], f"rule id {rid!r} must be 1-128 letters, digits, '_.:-'")
    stage_text = node.get("stage", "pre_tool")
    try:
        stage = Stage(stage_text)
    except ValueError:
        choices = ", ".join(s.value for s in Stage)
        ctx.fail(node.value_pos["stage"], f"unknown stage {stage_text!r} (one of {choices})")
    effect = ctx.effect(node, "effect", None)
    tools = _tool_globs(ctx, node)
    agents = _agent_globs(ctx, node)
    when = None
    if "when" in node:
        when = node["when"]
        if not isinstance(when, str) or not when.strip():
            ctx.fail(node.value_pos["when"], "'when' must be a non-empty CEL expression")
        from bastion.policy._compile import check_condition

        err = check_condition(when)
        if err is not None:
            line, col, msg = err
            ctx.fail(ctx.inside(node.value_pos["when"], line, col, node.key_pos["when"]),
                     f"in 'when' of rule {rid!r}: {msg}")
    limit = _limit(ctx, node)
    if limit is not None and effect not in (Effect.ALLOW, Effect.REQUIRE_APPROVAL):
        ctx.fail(node.key_pos["limit"], f"'limit' counts the calls an allow or require_approval "
                 f"rule lets through; a {effect.value} rule has none to count")
    redact, pattern = _redaction(ctx, node, effect, stage)
    k = node.key_pos["id"]
    return Rule(id=rid, stage=stage, tools=tools, agents=agents, effect=effect, when=when,
                message=ctx.string(node, "message"), limit=limit, redact=redact,
                redact_pattern=pattern, location=Location(ctx.path, k.line, k.column))


def _tool_globs(ctx: _Ctx, node: Located) -> tuple[str, ...]:
    from bastion._canon import norm_text

    got = ctx.str_list(node, "tools")
    if got is None:
        return ("*",)
    out = []
    for glob, pos in zip(*got, strict=True):
        canon = norm_text(glob)
        if not canon or _GLOB_CHARS.fullmatch(canon) is None or not _balanced(canon):
            ctx.fail(pos, f"bad tool glob {glob!r}: use letters, digits, '_-.:/' and '*?[]'")
        out.append(canon)
    return tuple(out)


def _agent_globs(ctx: _Ctx, node: Located) -> tuple[str, ...]:
    got = ctx.str_list(node, "agents")
    if got is None:
        return ("*",)
    for glob, pos in zip(*got, strict=True):
        if _AGENT_GLOB.fullmatch(glob) is None or not _balanced(glob):
            ctx.fail(pos, f"bad agent glob {glob!r}")
    return tuple(got[0])


def _balanced(glob: str) -> bool:
    depth = 0
    for ch in glob:
        if ch == "[":
            if depth:
                return False
            depth = 1
        elif ch == "]" and depth:
            depth = 0
    return depth == 0


def _limit(ctx: _Ctx, node: Located) -> RateLimit | None:
    if "limit" not in node:
        if "per" in node:
            ctx.fail(node.key_pos["per"], "'per' needs a 'limit'")
        return None
    text = node["limit"]
    m = _LIMIT.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        ctx.fail(node.value_pos["limit"], f"bad limit {text!r} (e.g. '10/minute', '100/1h')")
    count, mult, unit = int(m.group(1)), int(m.group(2) or 1), m.group(3).lower()
    if count < 1 or mult < 1:
        ctx.fail(node.value_pos["limit"], "a limit must be at least 1 per window")
    per_text = node.get("per", "agent")
    try:
        per = Per(per_text)
    except ValueError:
        ctx.fail(node.value_pos["per"], f"unknown 'per' {per_text!r} (agent, session or tool)")
    return RateLimit(count=count, window_s=mult * _UNITS[unit], per=per, text=text.strip())


def _redaction(ctx: _Ctx, node: Located, effect: Effect, stage: Stage
               ) -> tuple[tuple[str, ...], str | None]:
    paths = ctx.str_list(node, "redact")
    pattern = node.get("redact_pattern")
    if effect is not Effect.REDACT:
        for key in ("redact", "redact_pattern"):
            if key in node:
                ctx.fail(node.key_pos[key], f"{key!r} is only valid with 'effect: redact'")
        return (), None
    if paths is None and pattern is None:
        ctx.fail(node.pos, "a redact rule needs 'redact' (paths) or 'redact_pattern'")
    root = "result" if stage is Stage.POST_TOOL else "args"
    out: list[str] = []
    for p, pos in zip(*(paths or ([], [])), strict=True):
        if _REDACT_PATH.fullmatch(p) is None or not p.startswith(root):
            ctx.fail(pos, f"bad redact path {p!r}: at stage {stage.value!r} it starts with "
                          f"{root!r}, then '.key' or '.*' parts")
        out.append(p)
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern:
            ctx.fail(node.value_pos["redact_pattern"], "'redact_pattern' must be a regex string")
        from bastion.policy._compile import re2_problem

        problem = re2_problem(pattern)
        if problem is not None:
            ctx.fail(node.value_pos["redact_pattern"], f"bad redact_pattern: {problem}")
    return tuple(out), pattern


def _budgets(ctx: _Ctx, doc: Located) -> Budgets:
    if "budgets" not in doc:
        return Budgets()
    node = doc["budgets"]
    if not isinstance(node, Located):  # "budgets:" with nothing after it too: a ceiling lost
        ctx.fail(doc.value_pos["budgets"], "'budgets' must be a mapping")
    ctx.check_keys(node, _BUDGET_KEYS, "budgets")
    values: dict[str, Any] = {}
    for key in _BUDGET_KEYS:
        if key not in node:
            continue
        value = node[key]
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if key == "session_cost":
            if not number or not 0 < value < 1e12:
                ctx.fail(node.value_pos[key], "'session_cost' must be a positive number")
        elif not number or not isinstance(value, int) or value < 1:
            ctx.fail(node.value_pos[key], f"{key!r} must be a positive integer")
        values[key] = value
    return Budgets(**values)
