"""Information flow: the tool catalog (provenance labels and taint tracking build on it)."""

from bastion.flow._catalog import (
    CLASSES,
    EMPTY_CATALOG,
    ToolCatalog,
    ToolInfo,
    load_catalog,
    parse_catalog,
)

__all__ = ["CLASSES", "EMPTY_CATALOG", "ToolCatalog", "ToolInfo", "load_catalog",
           "parse_catalog"]
