"""Paths of the fast path's subset (``_fastpath``), compiled to look-up functions ("getters").

A path is a variable (one of ``ROOTS``) or, inside a macro, its iteration variable (one of
``bound``), then any number of ``.field`` steps and indexes by a string (``m["a"]``, ``m[k]``),
each a map look-up. A getter takes the evaluation's variables and returns the value at the path,
or ``MISSING`` wherever CEL would err: an absent variable or key, a parent that is not a map, an
index that is not a string. Compiling a node that is not such a path gives ``None``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Getter = Callable[[dict[str, Any]], Any]
ROOTS = {"tool", "args", "context", "agent", "session", "result", "tool_info", "arg_labels"}
MISSING = object()  # what a getter returns where CEL would err


def lookup(node: tuple[Any, ...], bound: frozenset[str]) -> Getter | None:
    """A getter for a path: a variable, then ``.field`` steps and indexes ``[key]`` by a string
    (a literal or a path); it returns ``MISSING`` where CEL would err."""
    getter = _path(node, bound)
    if getter is not None:
        return getter
    if node[0] == "select" and not node[3]:
        parent_of, key = lookup(node[1], bound), node[2]
        if parent_of is None:
            return None
        return lambda data: (p.get(key, MISSING) if type(p := parent_of(data)) is dict
                             else MISSING)
    if node[0] == "call" and node[1] == "_[_]" and len(node[2]) == 2:
        return _index(node[2][0], node[2][1], bound)
    return None


def path_getter(path: tuple[str, ...]) -> Getter:
    """The getter of ``_path`` for a path given as names (``("args", "to")``)."""
    node: tuple[Any, ...] = ("ident", path[0])
    for step in path[1:]:
        node = ("select", node, step, False)
    getter = _path(node, frozenset())
    assert getter is not None
    return getter


def variable_name(node: tuple[Any, ...], bound: frozenset[str]) -> str | None:
    """The name, when ``node`` is a variable or a bound iteration variable on its own."""
    if node[0] == "ident" and (node[1] in ROOTS or node[1] in bound):
        return str(node[1])
    return None


def _index(container_node: tuple[Any, ...], key_node: tuple[Any, ...], bound: frozenset[str]
           ) -> Getter | None:
    """``m[k]`` for a map ``m`` and a string ``k``; the common ``variable[iteration variable]``
    in one step."""
    m_name, k_name = variable_name(container_node, bound), variable_name(key_node, bound)
    if m_name is not None and k_name is not None:
        def by_names(data: dict[str, Any]) -> Any:
            m, k = data.get(m_name), data.get(k_name)
            return m.get(k, MISSING) if type(m) is dict and type(k) is str else MISSING

        return by_names
    container = lookup(container_node, bound)
    key_of: Getter | None
    if key_node[0] == "const":
        key = key_node[1]
        key_of = None if type(key) is not str else lambda data: key
    else:
        key_of = lookup(key_node, bound)
    if container is None or key_of is None:
        return None

    def index(data: dict[str, Any]) -> Any:
        m, k = container(data), key_of(data)
        return m.get(k, MISSING) if type(m) is dict and type(k) is str else MISSING

    return index


def _path(node: tuple[Any, ...], bound: frozenset[str]) -> Getter | None:
    """A getter for ``root.a.b`` (``root`` a variable or a bound iteration variable); it returns
    ``MISSING`` where CEL would err. The getter carries the path as names in ``.path``, which
    ``_fastpath.string_equality`` reads."""
    steps: list[str] = []
    while node[0] == "select" and not node[3]:
        steps.append(node[2])
        node = node[1]
    if node[0] != "ident" or (node[1] not in ROOTS and node[1] not in bound):
        return None
    root = node[1]
    steps.reverse()
    if len(steps) == 1:
        key = steps[0]

        def get1(data: dict[str, Any]) -> Any:
            parent = data.get(root)
            return parent.get(key, MISSING) if type(parent) is dict else MISSING

        get1.path = (root, key)  # type: ignore[attr-defined]
        return get1

    def get(data: dict[str, Any]) -> Any:
        value = data.get(root, MISSING)
        for step in steps:
            if type(value) is not dict or step not in value:
                return MISSING
            value = value[step]
        return value

    get.path = (root, *steps)  # type: ignore[attr-defined]
    return get
