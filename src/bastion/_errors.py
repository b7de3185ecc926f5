"""One error tree for bastion.

``BastionError`` is the root. The user's mistakes (``PolicyError``, ``ConfigError``) are kept apart
from run-time outcomes (``GovernanceDenied``) and from failures of a backend (``AuditError``,
``StateError``). Every class carries a stable ``code``. Messages are lower-case, quote identifiers
and put the location first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bastion.kernel import Decision


class BastionError(Exception):
    """Root of every error bastion raises on purpose."""

    code = "bastion_error"


class PolicyError(BastionError):
    """A policy, catalog or test file is malformed; ``path:line:column`` says where."""

    code = "policy_error"

    def __init__(self, message: str, *, path: str = "<text>", line: int = 0, column: int = 0):
        self.message = message
        self.path = path
        self.line = line
        self.column = column
        super().__init__(self.render())

    def render(self) -> str:
        """The ``PATH:LINE:COL: error: MESSAGE`` form printed by ``bastion check``."""
        return f"{self.path}:{self.line}:{self.column}: error: {self.message}"


class PolicyWarning(UserWarning):
    """A policy that loads but is probably not what its author meant (``default: allow``);
    issued once per kernel built from it, with the ``PATH:LINE:COL`` of the cause."""


class ConfigError(BastionError):
    """An option passed to a constructor or the CLI is invalid."""

    code = "config_error"


class StateError(BastionError):
    """The state store failed or could not be reached."""

    code = "state_error"


class AuditError(BastionError):
    """The audit log could not be written, opened or verified."""

    code = "audit_error"


class ApprovalError(BastionError):
    """An approval id is unknown, expired, already used or does not match the action."""

    code = "approval_error"


class GovernanceDenied(BastionError):
    """A governed call was not allowed; ``decision`` says why."""

    code = "governance_denied"

    def __init__(self, decision: Decision):
        self.decision = decision
        reason = "; ".join(decision.reasons) or decision.effect
        super().__init__(f"{decision.tool!r} {decision.effect}: {reason} (decision {decision.id})")


def without_password(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` URL in it (up to the
    last ``@`` before the host: a password may hold one) and of any ``password=``-like query
    parameter as ``***``: store targets are quoted in messages, never their secrets."""
    import re

    text = re.sub(r"(://[^/@\s:]*:)\S*@", r"\1***@", text)  # may mask a port too: safe
    return re.sub(r"([?&](?:ssl)?pass(?:word|wd)?=)[^&\s'\"]*", r"\1***", text,
                  flags=re.IGNORECASE)
