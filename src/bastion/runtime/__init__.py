"""Execution control: rings, sandboxed execution, sagas with compensation, the kill switch.

This module only re-exports; implementation lives in private modules.
"""

from bastion.runtime._errors import IsolationUnavailable, SagaError, SagaStuck, SandboxError
from bastion.runtime._exec import RING_ISOLATION, IsolationGuard, code_tool
from bastion.runtime._isolation import Capabilities, IsolationLevel, detect_isolation
from bastion.runtime._kill import KillSwitch, flag_key, release_proof
from bastion.runtime._rings import DEFAULT_RINGS, Elevation, RingGuard
from bastion.runtime._saga import (
    RetryPolicy,
    SagaAlert,
    SagaDefinition,
    SagaOutcome,
    SagaRegistry,
    SagaRunner,
    Step,
    StepContext,
)
from bastion.runtime._saga_log import SagaEvent, SagaLog, SagaRecord, StepRecord
from bastion.runtime._sandbox import (
    ResourceUsage,
    Sandbox,
    SandboxPolicy,
    SandboxResult,
    kill_all_sandboxes,
    running_sandboxes,
)

__all__ = [
    "DEFAULT_RINGS",
    "RING_ISOLATION",
    "Capabilities",
    "Elevation",
    "IsolationGuard",
    "IsolationLevel",
    "IsolationUnavailable",
    "KillSwitch",
    "ResourceUsage",
    "RetryPolicy",
    "RingGuard",
    "SagaAlert",
    "SagaDefinition",
    "SagaError",
    "SagaEvent",
    "SagaLog",
    "SagaOutcome",
    "SagaRecord",
    "SagaRegistry",
    "SagaRunner",
    "SagaStuck",
    "Sandbox",
    "SandboxError",
    "SandboxPolicy",
    "SandboxResult",
    "Step",
    "StepContext",
    "StepRecord",
    "code_tool",
    "detect_isolation",
    "flag_key",
    "kill_all_sandboxes",
    "release_proof",
    "running_sandboxes",
]
