"""The enforcement point: ``Kernel``, ``Action``, ``Decision`` and ``govern``."""

from bastion.kernel._approvals import Approver
from bastion.kernel._govern import approval, govern
from bastion.kernel._kernel import Kernel
from bastion.kernel._types import Action, AgentFacts, Decision, Guard

__all__ = ["Action", "AgentFacts", "Approver", "Decision", "Guard", "Kernel", "approval", "govern"]
