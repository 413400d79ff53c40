"""Bounds on a forget specification, checked while it is parsed, before anything is built.

A spec is small (a few sets, a rule tree, some hyperparameters), but text can describe
far more than it holds: YAML aliases re-use a node, so 560 bytes of nested aliases expand
to a billion scalars, and a rule nested a few hundred deep overflows the interpreter's
stack in every recursive step after it (validation, JSON, the job store). So a spec is
refused, with a message that names the bound, when:

* its text is over ``MAX_TEXT_BYTES``;
* YAML: it uses more than ``MAX_ALIASES`` aliases, an alias refers to a node that holds
  it (a cycle), or its aliases expand it beyond the size bounds below; all checked on
  the composed node graph, before a single Python object is built;
* it nests mappings and lists deeper than ``MAX_DEPTH``;
* it holds more than ``MAX_NODES`` values, or is larger than ``MAX_EXPANDED_BYTES`` once
  expanded (about the size of its JSON).
"""

from __future__ import annotations

from typing import Any

import yaml

from unlearning.errors import SpecError

MAX_TEXT_BYTES = 1 << 20
MAX_EXPANDED_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 32
MAX_ALIASES = 100


def check_text(text: str) -> None:
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_TEXT_BYTES:
        raise SpecError(f"spec is {size:,} bytes; at most {MAX_TEXT_BYTES:,} are accepted")


def _too_deep() -> SpecError:
    return SpecError(f"spec nests mappings and lists more than {MAX_DEPTH} deep; flatten it")


def _check_totals(nodes: int, size: int, how: str) -> None:
    if nodes > MAX_NODES:
        raise SpecError(f"spec holds more than {MAX_NODES:,} values{how}; that is over the limit")
    if size > MAX_EXPANDED_BYTES:
        raise SpecError(f"spec is larger than {MAX_EXPANDED_BYTES:,} bytes{how}; that is over the limit")


class BoundedComposer:
    """A mix-in for a PyYAML loader: counts aliases and nesting while the document is
    composed (the composer recursion is bounded, so no RecursionError), and checks the
    expanded size of the composed graph before it is constructed."""

    _aliases = 0
    _depth = 0

    def compose_node(self, parent, index):  # PyYAML's hook: one call per node, recursive
        if self.check_event(yaml.events.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise SpecError(f"spec uses more than {MAX_ALIASES} YAML aliases; write the values out")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:  # + 1: the scalars inside the deepest container
                raise _too_deep()
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        check_graph(node)
        return self.construct_document(node)


def check_graph(root: yaml.Node) -> None:
    """Size of a composed YAML graph with its aliases expanded, computed without expanding
    them (each shared node once); a node that contains itself is refused."""
    sizes: dict[int, tuple[int, int, int]] = {}  # id(node) -> (values, bytes, depth)
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            nodes, size, depth = 1, 2, 0  # a mapping or a list: one level over its deepest child
            for child in _children(node):
                c_nodes, c_size, c_depth = sizes[id(child)]
                nodes, size, depth = nodes + c_nodes, size + c_size, max(depth, c_depth)
            depth += 1
            if depth > MAX_DEPTH:
                raise _too_deep()
            _check_totals(nodes, size, " once its aliases are expanded")
            sizes[key] = (nodes, size, depth)
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise SpecError("spec has a YAML alias that refers to a node containing it (a cycle)")
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = (1, len(node.value) + 2, 0)
            continue
        on_path.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in on_path:
                raise SpecError("spec has a YAML alias that refers to a node containing it (a cycle)")
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def check_data(data: Any) -> None:
    """The same bounds on parsed data (JSON, or a mapping handed over in code)."""
    nodes = size = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if isinstance(value, dict):
            depth += 1
            size += 2
            stack.extend((item, depth) for pair in value.items() for item in pair)
        elif isinstance(value, (list, tuple)):
            depth += 1
            size += 2
            stack.extend((item, depth) for item in value)
        else:
            size += len(value) + 2 if isinstance(value, str) else 8
        if depth > MAX_DEPTH:
            raise _too_deep()
        if nodes > MAX_NODES or size > MAX_EXPANDED_BYTES:
            _check_totals(nodes, size, "")
