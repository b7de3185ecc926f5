"""Errors raised by ``bastion.runtime``; every class subclasses ``bastion.BastionError``.

Run-time refusals (``IsolationUnavailable``, ``SagaStuck``) are outcomes a caller must handle;
``SandboxError`` and ``SagaError`` are failures of the machinery itself.
"""

from __future__ import annotations

from bastion._errors import BastionError


class SandboxError(BastionError):
    """A sandbox could not be set up or supervised (not: the sandboxed code failed)."""

    code = "sandbox_error"


class IsolationUnavailable(SandboxError):
    """The isolation level a policy requires is not available here; nothing was run."""

    code = "isolation_unavailable"

    def __init__(self, required: str, available: str, reason: str):
        self.required = required
        self.available = available
        self.reason = reason
        super().__init__(f"isolation {required!r} required but only {available!r} is "
                         f"available: {reason}")


class SagaError(BastionError):
    """A saga definition, step registry or saga log is invalid or failed."""

    code = "saga_error"


class SagaStuck(SagaError):
    """A saga's compensation kept failing; it was escalated and executes no further steps."""

    code = "saga_stuck"

    def __init__(self, saga_id: str, step: str):
        self.saga_id = saga_id
        self.step = step
        super().__init__(f"saga {saga_id!r} is stuck: compensation of step {step!r} failed "
                         "after every retry and needs an operator")
