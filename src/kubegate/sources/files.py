"""The file source: manifests from files, directories and stdin, into objects and user-facing problems.

Nothing here raises on user input. A file that cannot be read or parsed is one problem and the other files
still load; a bad object is reported (every problem of it at once) and left out, and the others load.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

import yaml

from kubegate.objects.decode import DecodeError, UnknownKind, check_object
from kubegate.objects.kinds import KubeObject
from kubegate.objects.meta import ObjectKey, Origin
from kubegate.objects.snapshot import Snapshot
from kubegate.objects.validate import warnings
from kubegate.sources.yamlload import YAMLSyntaxError, document_node, documents, duplicate_keys, node_line

STDIN = "-"
STDIN_SOURCE = "<stdin>"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
CLUSTER_SCOPED_KINDS = frozenset({"IngressClass"})

# stdin cannot be read twice: keep the last text read so line_of can still find lines in it.
_stdin_text: dict[str, str] = {}


@dataclass(frozen=True)
class Loaded:
    obj: KubeObject
    origin: Origin


@dataclass(frozen=True)
class Problem:
    origin: Origin
    object: ObjectKey | None
    field: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        parts = [str(self.origin)]
        if not self.origin.line and self.origin.document:
            parts[0] += f" (document {self.origin.document})"
        if self.object is not None:
            unnamed = not self.object.name
            parts.append(f"{self.object.kind} (without a name)" if unnamed else str(self.object))
        if self.field:
            parts.append(f"{self.field}: {self.message}")
        else:
            parts[-1] += ":"
            parts.append(self.message)
        if self.severity == "warning":
            parts.insert(1, "warning:")
        return " ".join(parts)


@dataclass(frozen=True)
class Skipped:
    origin: Origin
    api_version: str
    kind: str
    name: str


@dataclass(frozen=True)
class LoadResult:
    objects: tuple[Loaded, ...]
    problems: tuple[Problem, ...]
    skipped: tuple[Skipped, ...]

    def snapshot(self) -> Snapshot:
        return Snapshot.of(loaded.obj for loaded in self.objects)


# --------------------------------------------------------------------------------------------------
# finding files


def _is_manifest(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(MANIFEST_SUFFIXES)


def _directory_files(directory: str) -> Iterator[str]:
    """Manifest files under a directory, recursively, sorted, hidden files and directories skipped."""

    def ignore(_error: OSError) -> None:
        # an unreadable subdirectory loses only its own files; reading them would report the rest
        return None

    for root, dirs, files in os.walk(directory, onerror=ignore):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if _is_manifest(name):
                yield os.path.join(root, name)


# --------------------------------------------------------------------------------------------------
# the loader


def _raw_key(document: object) -> ObjectKey | None:
    """kind/namespace/name as written, for naming an object whose decoding failed."""
    if not isinstance(document, dict) or not isinstance(document.get("kind"), str):
        return None
    kind: str = document["kind"]
    metadata = document.get("metadata")
    name = namespace = ""
    if isinstance(metadata, dict):
        raw_name, raw_namespace = metadata.get("name"), metadata.get("namespace")
        name = raw_name if isinstance(raw_name, str) else ""
        namespace = raw_namespace if isinstance(raw_namespace, str) and raw_namespace else "default"
    else:
        namespace = "default"
    if kind in CLUSTER_SCOPED_KINDS:
        namespace = ""
    return ObjectKey(kind, namespace, name)


def _key(obj: KubeObject) -> ObjectKey:
    namespace = "" if obj.kind in CLUSTER_SCOPED_KINDS else obj.metadata.namespace
    return ObjectKey(obj.kind, namespace, obj.metadata.name)


def _join(prefix: str, field: str) -> str:
    if not prefix:
        return field
    if not field or field.startswith("["):
        return prefix + field
    return f"{prefix}.{field}"


class _Loader:
    def __init__(self) -> None:
        self.objects: list[Loaded] = []
        self.problems: list[Problem] = []
        self.skipped: list[Skipped] = []
        self.seen: dict[ObjectKey, Origin] = {}

    def problem(self, origin: Origin, key: ObjectKey | None, field: str, message: str) -> None:
        self.problems.append(Problem(origin, key, field, message))

    def path(self, path: str, stdin: TextIO | None) -> None:
        if path == STDIN:
            try:
                text = (stdin if stdin is not None else sys.stdin).read()
            except (OSError, UnicodeDecodeError, ValueError) as error:
                self.problem(Origin(STDIN_SOURCE, 0, 0), None, "", f"cannot read stdin: {error}")
                return
            _stdin_text[STDIN_SOURCE] = text
            self.text(STDIN_SOURCE, text, is_json=False)
        elif os.path.isdir(path):
            found = False
            for file in _directory_files(path):
                found = True
                self.file(file)
            if not found:
                self.problems.append(
                    Problem(Origin(path, 0, 0), None, "", "no *.yaml, *.yml or *.json files here", "warning")
                )
        else:
            self.file(path)

    def file(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8-sig") as handle:
                text = handle.read()
        except UnicodeDecodeError as error:
            self.problem(Origin(path, 0, 0), None, "", f"not UTF-8 text (byte {error.start})")
            return
        except OSError as error:
            self.problem(Origin(path, 0, 0), None, "", f"cannot read: {error.strerror or error}")
            return
        self.text(path, text, is_json=path.lower().endswith(".json"))

    def text(self, source: str, text: str, is_json: bool) -> None:
        if is_json:
            self.json_text(source, text)
            return
        try:
            for document in documents(text):
                self.duplicates(source, document.index, document.data, document.node)
                self.document(source, document.index, document.data, _constant(document.node))
        except YAMLSyntaxError as error:
            self.problem(Origin(source, 0, error.line), None, "", _with_column(error))

    def json_text(self, source: str, text: str) -> None:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            self.problem(
                Origin(source, 0, error.lineno), None, "", f"invalid JSON: {error.msg} (column {error.colno})"
            )
            return
        except RecursionError:
            self.problem(Origin(source, 0, 1), None, "", "invalid JSON: nested too deeply")
            return
        cache: list[yaml.Node | None] = []

        def node() -> yaml.Node | None:
            # JSON is (nearly) YAML: compose it only when a line is needed
            if not cache:
                cache.append(document_node(text, 0))
            return cache[0]

        if data is not None:
            self.document(source, 0, data, node)

    def duplicates(self, source: str, index: int, data: object, node: yaml.Node) -> None:
        for field, line, first in duplicate_keys(node):
            key = _raw_key(data)
            if field.startswith("items[") and isinstance(data, dict) and isinstance(data.get("items"), list):
                position = int(field[len("items[") : field.index("]")])
                if position < len(data["items"]):
                    key = _raw_key(data["items"][position])
            self.problems.append(
                Problem(
                    Origin(source, index, line),
                    key,
                    field,
                    f"given twice (first at line {first}); the last one is used",
                    "warning",
                )
            )

    def document(self, source: str, index: int, data: object, node: Callable[[], yaml.Node | None]) -> None:
        def line(field: str) -> int:
            root = node()
            return 1 if root is None else node_line(root, field)

        if isinstance(data, dict) and isinstance(data.get("kind"), str) and data["kind"].endswith("List"):
            items = data.get("items")
            if items is None:
                return
            if not isinstance(items, list):
                self.problem(
                    Origin(source, index, line("items")), None, "items", "expected a list of objects"
                )
                return
            list_kind: str = data["kind"]
            for position, item in enumerate(items):
                self.object(source, index, _list_item(data, list_kind, item), f"items[{position}]", line)
        else:
            self.object(source, index, data, "", line)

    def object(self, source: str, index: int, data: object, prefix: str, line: Callable[[str], int]) -> None:
        start = line(prefix)
        origin = Origin(source, index, start)
        key = _raw_key(data)
        try:
            obj, errors = check_object(data)
        except UnknownKind as unknown:
            self.skipped.append(Skipped(origin, unknown.api_version, unknown.kind, key.name if key else ""))
            return
        except DecodeError as error:
            field = _join(prefix, error.field)
            self.problem(Origin(source, index, line(field)), key, field, error.message)
            return
        key = _key(obj)
        if errors:
            for field_error in errors:
                field = _join(prefix, field_error.field)
                self.problem(Origin(source, index, line(field)), key, field, field_error.message)
            return
        for warning in warnings(obj):
            field = _join(prefix, warning.field)
            self.problems.append(
                Problem(Origin(source, index, line(field)), key, field, warning.message, "warning")
            )
        first = self.seen.get(key)
        if first is not None:
            self.problem(
                origin, key, "", f"defined twice: also defined at {first}; this definition is ignored"
            )
            return
        self.seen[key] = origin
        self.objects.append(Loaded(obj, origin))


def _constant(node: yaml.Node) -> Callable[[], yaml.Node | None]:
    return lambda: node


def _list_item(list_document: dict[str, object], list_kind: str, item: object) -> object:
    """Items of a typed list from the API (ServiceList) carry no apiVersion/kind: the list's apply."""
    if not isinstance(item, dict) or list_kind == "List" or "kind" in item:
        return item
    filled = dict(item)
    filled["kind"] = list_kind.removesuffix("List")
    filled.setdefault("apiVersion", list_document.get("apiVersion"))
    return filled


def _with_column(error: YAMLSyntaxError) -> str:
    return f"{error.message} (column {error.column})" if error.column else error.message


def load_paths(paths: Sequence[str], stdin: TextIO | None = None) -> LoadResult:
    """Load manifests from files, directories (recursive) and "-" (stdin, or ``stdin`` if given)."""
    loader = _Loader()
    for path in paths:
        loader.path(path, stdin)
    return LoadResult(tuple(loader.objects), tuple(loader.problems), tuple(loader.skipped))


def line_of(origin: Origin, field: str) -> int:
    """The line of ``field`` (relative to the object, e.g. ``spec.rules[0].host``) in the object at
    ``origin``; ``origin.line`` when the source cannot be read again or the field is not there."""
    if origin.source == STDIN_SOURCE:
        text = _stdin_text.get(STDIN_SOURCE)
        if text is None:
            return origin.line
    else:
        try:
            with open(origin.source, encoding="utf-8-sig") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError):
            return origin.line
    root = document_node(text, origin.document)
    if root is None:
        return origin.line
    # an item of a List: its mapping is the one starting on origin.line
    start = _node_starting_at(root, origin.line) or root
    return node_line(start, field) if field else origin.line


def _node_starting_at(root: yaml.Node, line: int) -> yaml.Node | None:
    if root.start_mark.line + 1 == line:
        return root
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if (
                isinstance(key, yaml.ScalarNode)
                and key.value == "items"
                and isinstance(value, yaml.SequenceNode)
            ):
                for item in value.value:
                    if item.start_mark.line + 1 == line:
                        found: yaml.Node = item
                        return found
    return None
