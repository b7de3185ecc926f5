"""The policy model: frozen, typed values produced by the loader and read by the compiler."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Effect(StrEnum):
    """What a matching rule asks for. ``redact`` and ``audit`` are obligations on an allow."""

    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"
    REDACT = "redact"
    AUDIT = "audit"


class Stage(StrEnum):
    """The intervention points at which the kernel decides."""

    INPUT = "input"
    PRE_TOOL = "pre_tool"
    POST_TOOL = "post_tool"
    OUTPUT = "output"


class Per(StrEnum):
    """What a rate limit counts by."""

    AGENT = "agent"
    SESSION = "session"
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class Location:
    path: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` matching calls per ``window_s`` seconds, counted ``per`` key."""

    count: int
    window_s: int
    per: Per
    text: str


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    stage: Stage
    tools: tuple[str, ...]
    agents: tuple[str, ...]
    effect: Effect
    when: str | None = None
    message: str = ""
    limit: RateLimit | None = None
    redact: tuple[str, ...] = ()
    redact_pattern: str | None = None
    location: Location | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Budgets:
    """Per-session ceilings the kernel enforces from the state store (``None``: no ceiling).

    ``session_calls``: pre_tool calls allowed per session. ``session_cost`` and
    ``session_tokens``: usage the caller reports (``Kernel.report_usage``); once reached, further
    calls are denied. ``max_repeats``: the same call (tool and arguments) allowed this many times
    per session — a loop breaker. ``max_failures``: a call that failed (an outcome of ``failed``
    or ``exception``) this many times in a session is not allowed again.
    """

    session_calls: int | None = None
    session_cost: float | None = None
    session_tokens: int | None = None
    max_repeats: int | None = None
    max_failures: int | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.session_calls, self.session_cost,
                                            self.session_tokens, self.max_repeats,
                                            self.max_failures))


@dataclass(frozen=True, slots=True)
class Policy:
    version: int
    name: str
    default: Effect
    rules: tuple[Rule, ...]
    budgets: Budgets = Budgets()
    source: str = "<text>"
    digest: str = ""
    warnings: tuple[str, ...] = ()
