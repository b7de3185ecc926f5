"""``schema_mismatch``: an argument whose JSON type the tool does not declare is denied before a
framework converts it into a value the policy never saw."""

from __future__ import annotations

import bastion
from bastion.adapters._core import ToolGate, schema_mismatch

SCHEMA = {"type": "object", "properties": {
    "path": {"type": "string"}, "recursive": {"type": "boolean"},
    "depth": {"type": "integer"}, "ratio": {"type": "number"},
    "tags": {"anyOf": [{"type": "array"}, {"type": "null"}]}, "free": {}}}


def test_declared_types_are_held_to() -> None:
    assert schema_mismatch({"path": "/a", "recursive": True, "depth": 2, "ratio": 2,
                            "tags": None, "free": "anything"}, SCHEMA) is None
    assert schema_mismatch({"recursive": "true"}, SCHEMA) is not None
    assert schema_mismatch({"depth": 2.5}, SCHEMA) is not None
    assert schema_mismatch({"depth": True}, SCHEMA) is not None  # a bool is no integer
    assert schema_mismatch({"tags": "a,b"}, SCHEMA) is not None
    assert schema_mismatch({"unknown": 1}, SCHEMA) is None  # not declared: not judged
    assert schema_mismatch({"x": 1}, None) is None and schema_mismatch("x", SCHEMA) is None


def test_the_gate_denies_a_mismatch_with_the_reason() -> None:
    policy = "version: 1\nrules:\n  - {id: all, effect: allow}\n"
    with bastion.Kernel.from_text(policy, audit=False) as kernel:
        gate = ToolGate(kernel)
        pre = gate.before("rm", {"path": "/tmp/x", "recursive": "true"}, schema=SCHEMA)
        assert not pre.run and "recursive" in pre.message
        assert gate.before("rm", {"path": "/tmp/x", "recursive": True}, schema=SCHEMA).run
