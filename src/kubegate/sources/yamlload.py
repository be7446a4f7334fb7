"""YAML documents with their node trees, and the line of a field path inside one.

Kubernetes YAML is JSON-shaped, so the loader drops the implicit timestamp resolver (``2024-01-01`` stays
the string the API server would see). Composing a document's node tree is what PyYAML's loader does anyway
before constructing Python values, so keeping the root node costs nothing extra and gives lines for free.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

# The C loader when PyYAML was built with libyaml (about 10x faster), else the pure-Python one.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class KubeLoader(_BaseLoader):  # type: ignore[misc]
    """SafeLoader (C if available) without the timestamp resolver."""


KubeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True, slots=True)
class Document:
    """One non-empty YAML document: its index in the stream (counting empty ones), data and root node."""

    index: int
    data: object
    node: yaml.Node

    @property
    def line(self) -> int:
        return self.node.start_mark.line + 1


class YAMLSyntaxError(Exception):
    """A stream that is not YAML; ``line``/``column`` are 1-based (0 when unknown)."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def _syntax_error(error: yaml.YAMLError) -> YAMLSyntaxError:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    message = f"{context}: {problem}" if context else str(problem)
    if mark is None:
        return YAMLSyntaxError(f"invalid YAML: {message}", 0, 0)
    return YAMLSyntaxError(f"invalid YAML: {message}", mark.line + 1, mark.column + 1)


def documents(text: str) -> Iterator[Document]:
    """Yield the non-empty documents of a YAML (or JSON) stream.

    Raises YAMLSyntaxError on the first syntax error; documents before it have been yielded.
    """
    loader = KubeLoader(text)
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            data = loader.construct_document(node)
            # An empty document ("---" followed by nothing) composes to a null scalar: skipped, counted.
            if data is not None:
                yield Document(index, data, node)
            index += 1
    except yaml.YAMLError as error:
        raise _syntax_error(error) from None
    except (RecursionError, ValueError, OverflowError) as error:
        # Pathologically nested input, or a scalar PyYAML's constructors reject (e.g. an explicit
        # !!timestamp that is no date).
        raise YAMLSyntaxError(f"invalid YAML: {error}", 0, 0) from None
    finally:
        loader.dispose()


def document_node(text: str, index: int) -> yaml.Node | None:
    """The node tree of document ``index`` (as counted by ``documents``), or None."""
    loader = KubeLoader(text)
    try:
        current = 0
        while loader.check_node():
            node = loader.get_node()
            if current == index:
                found: yaml.Node | None = node
                return found
            current += 1
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return None


_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]|\[([^\]]*)\]")


def path_segments(field: str) -> list[str | int]:
    """``spec.rules[0].http`` -> ["spec", "rules", 0, "http"]; ``data[tls.crt]`` -> ["data", "tls.crt"]."""
    segments: list[str | int] = []
    for name, number, key in _SEGMENT.findall(field):
        if name:
            segments.append(name)
        elif number:
            segments.append(int(number))
        else:
            segments.append(key)
    return segments


def node_line(node: yaml.Node, field: str) -> int:
    """1-based line of ``field`` under ``node``: of the field's key when it exists, else of the nearest
    existing parent, else of the node itself."""
    line = node.start_mark.line + 1
    current: yaml.Node = node
    for segment in path_segments(field):
        if isinstance(segment, int) and isinstance(current, yaml.SequenceNode):
            if segment >= len(current.value):
                return line
            current = current.value[segment]
            line = current.start_mark.line + 1
        elif isinstance(current, yaml.MappingNode):
            # the last match: a key given twice has its last value, as when the document was loaded
            matches = [
                (key, value)
                for key, value in current.value
                if isinstance(key, yaml.ScalarNode) and key.value == str(segment)
            ]
            if not matches:
                return line
            key, current = matches[-1]
            # the key's line, not the value's: a nested mapping's value starts a line below
            line = key.start_mark.line + 1
        else:
            return line
    return line


def duplicate_keys(node: yaml.Node) -> list[tuple[str, int, int]]:
    """Mapping keys given twice, as (field path, line, line of the first): YAML keeps the last silently,
    which drops a whole block a user meant to keep."""
    found: list[tuple[str, int, int]] = []
    stack: list[tuple[yaml.Node, str]] = [(node, "")]
    # Aliases make the tree a graph (even a cycle): visit each node once, or an alias bomb never ends.
    visited: set[int] = set()
    while stack:
        current, path = stack.pop()
        if id(current) in visited:
            continue
        visited.add(id(current))
        if isinstance(current, yaml.MappingNode):
            first_lines: dict[str, int] = {}
            for key, value in current.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue
                field = f"{path}.{key.value}" if path else str(key.value)
                line = key.start_mark.line + 1
                if key.value in first_lines:
                    found.append((field, line, first_lines[key.value]))
                else:
                    first_lines[key.value] = line
                stack.append((value, field))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend((item, f"{path}[{index}]") for index, item in enumerate(current.value))
    found.sort(key=lambda entry: entry[1])
    return found
