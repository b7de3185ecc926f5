"""bastion: runtime governance for autonomous AI agents.

This module only re-exports the public API; see README.md and docs/ for the contracts.
"""

from bastion._errors import (
    ApprovalError,
    AuditError,
    BastionError,
    ConfigError,
    GovernanceDenied,
    PolicyError,
    PolicyWarning,
    StateError,
)
from bastion.kernel import Action, Decision, Kernel, approval, govern

__version__ = "0.1.0"

__all__ = [
    "Action",
    "ApprovalError",
    "AuditError",
    "BastionError",
    "ConfigError",
    "Decision",
    "GovernanceDenied",
    "Kernel",
    "PolicyError",
    "PolicyWarning",
    "StateError",
    "__version__",
    "approval",
    "govern",
]
