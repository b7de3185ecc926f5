"""The enforcement point: ``Kernel``, ``Action``, ``Decision`` and ``govern``."""

from bastion.kernel._approvals import Approver
from bastion.kernel._govern import approval, govern
from bastion.kernel._kernel import AgentFacts, Guard, Kernel
from bastion.kernel._types import Action, Decision

__all__ = ["Action", "AgentFacts", "Approver", "Decision", "Guard", "Kernel", "approval", "govern"]
