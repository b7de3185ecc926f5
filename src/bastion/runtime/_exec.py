"""Code execution under the kernel: the isolation an agent's ring requires, or no run at all.

Every ring has a minimum isolation level for tools of class ``code`` (by default ``BWRAP`` for
every ring: the only level that stops writes outside the work directory). Two places enforce
it:

1. ``IsolationGuard``, a kernel guard: a ``code`` tool is denied (``code: guard``) when this
   machine cannot provide the level the agent's ring requires — the decision itself fails
   closed, before anything is attempted.
2. ``code_tool``, a governed function that runs the code with ``Sandbox``, requiring the same
   level again at run time (``IsolationUnavailable`` if the machine changed in between). Its
   sandboxes are labelled with the agent, the session and the canonical tool name, and each
   run checks the kill flags once it is registered, so a switch engaged between the decision
   and the start of the run still stops it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from bastion._canon import canonical_tool
from bastion.flow import ToolCatalog
from bastion.kernel import Kernel, govern
from bastion.runtime._isolation import Capabilities, IsolationLevel, detect_isolation
from bastion.runtime._kill import kill_hit
from bastion.runtime._rings import RingGuard
from bastion.runtime._sandbox import Sandbox, SandboxPolicy, SandboxResult, labelled

# Only bubblewrap keeps code from writing outside its work directory (a review showed ring-1
# code at NAMESPACES rewriting the kernel's state store), so every ring requires it by default.
RING_ISOLATION: Mapping[int, IsolationLevel] = {
    0: IsolationLevel.BWRAP,
    1: IsolationLevel.BWRAP,
    2: IsolationLevel.BWRAP,
    3: IsolationLevel.BWRAP,
}


class IsolationGuard:
    """Denies a ``code`` tool whose ring's isolation is not available here (step 1)."""

    name = "isolation"

    def __init__(self, catalog: ToolCatalog, rings: RingGuard, *,
                 capabilities: Capabilities | None = None,
                 required: Mapping[int, IsolationLevel] = RING_ISOLATION):
        self._catalog = catalog
        self._rings = rings
        self._caps = capabilities
        self._required = required

    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            self._caps = detect_isolation()
        return self._caps

    def required_level(self, agent_id: str) -> IsolationLevel:
        return self._required[self._rings.ring(agent_id)]

    def __call__(self, action: Any, tool: str, agent_id: str) -> str | None:
        if self._catalog.get(tool).tool_class != "code":
            return None
        level = self.required_level(agent_id)
        if self.capabilities.pick(level) is not None:
            return None
        notes = "; ".join(self.capabilities.notes) or "not supported here"
        return (f"ring {self._rings.ring(agent_id)} requires {level.name.lower()} isolation "
                f"to run code, which this machine cannot provide ({notes})")


def code_tool(kernel: Kernel, guard: IsolationGuard, *, agent_id: str,
              session: Mapping[str, Any] | None = None, name: str = "run_python",
              policy: SandboxPolicy | None = None) -> Callable[[str], SandboxResult]:
    """A governed ``run_python(code)`` for one agent that runs in the sandbox (step 2)."""
    base = policy or SandboxPolicy()
    session_id = str((session or {}).get("id", ""))
    tool = canonical_tool(name) or name  # the spelling kill flags and the kernel use

    def stopped() -> str | None:
        hit = kill_hit(kernel.state.flags(), agent=agent_id, session=session_id, tool=tool)
        return None if hit is None else "kill_switch"

    def run_python(code: str) -> SandboxResult:
        level = max(guard.required_level(agent_id), base.required_level)
        sandbox = Sandbox(replace(base, required_level=level),
                          capabilities=guard.capabilities, stop=stopped)
        with labelled(agent=agent_id, session=session_id, tool=tool):
            return sandbox.run_python(code)

    run_python.__name__ = name
    governed: Callable[[str], SandboxResult] = govern(
        kernel, name=name, agent={"id": agent_id}, session=session)(run_python)
    return governed
