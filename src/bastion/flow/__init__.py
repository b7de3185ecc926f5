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
    Provenance,
    canonical,
    identifiers,
)

__all__ = ["CLASSES", "EMPTY_CATALOG", "TRUSTED", "UNKNOWN", "UNTRUSTED", "Provenance",
           "ToolCatalog", "ToolInfo", "canonical", "identifiers", "load_catalog",
           "parse_catalog"]
