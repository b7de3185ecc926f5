"""Information flow: the tool catalog and value-level provenance (labels on what the agent saw
and on every argument it passes on)."""

from bastion.flow._catalog import (
    CLASSES,
    EMPTY_CATALOG,
    ToolCatalog,
    ToolInfo,
    load_catalog,
    parse_catalog,
)
from bastion.flow._provenance import (
    TRUSTED,
    UNKNOWN,
    UNTRUSTED,
    UNTRUSTED_IDENTIFIER,
    Provenance,
)
from bastion.flow._results import SPOTLIGHT_PROMPT, injection_signal
from bastion.flow._values import canonical, identifiers

__all__ = [
    "CLASSES",
    "EMPTY_CATALOG",
    "SPOTLIGHT_PROMPT",
    "TRUSTED",
    "UNKNOWN",
    "UNTRUSTED",
    "UNTRUSTED_IDENTIFIER",
    "Provenance",
    "ToolCatalog",
    "ToolInfo",
    "canonical",
    "identifiers",
    "injection_signal",
    "load_catalog",
    "parse_catalog",
]
