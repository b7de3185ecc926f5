"""Policy model, strict loader, CEL conditions, compiled index and combining."""

from bastion.policy._compile import CompiledPolicy, CompiledRule, compile_policy
from bastion.policy._eval import Verdict, evaluate
from bastion.policy._loader import load_policy, parse_policy
from bastion.policy._model import Budgets, Effect, Location, Per, Policy, RateLimit, Rule, Stage

__all__ = [
    "Budgets",
    "CompiledPolicy",
    "CompiledRule",
    "Effect",
    "Location",
    "Per",
    "Policy",
    "RateLimit",
    "Rule",
    "Stage",
    "Verdict",
    "compile_policy",
    "evaluate",
    "load_policy",
    "parse_policy",
]
