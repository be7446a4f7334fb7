"""PATCH bodies: JSON merge patch (RFC 7386) and JSON patch (RFC 6902); strategic merge is in strategic.py."""

from __future__ import annotations

import copy
from typing import Any

from tests.fakes.errors import ApiError, bad_request

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes a member, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(
            f"the server rejected our request due to an error in our request: json patch path {path!r} "
            "must start with '/'"
        )
    return [_unescape(token) for token in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, *, for_insert: bool) -> int:
    if token == "-" and for_insert:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise _patch_error(f"invalid array index {token!r} in {path!r}")
    index = int(token)
    limit = len(container) if for_insert else len(container) - 1
    if index > limit:
        raise _patch_error(f"array index {index} out of bounds in {path!r}")
    return index


def _patch_error(message: str) -> ApiError:
    return ApiError(
        422, "Invalid", f"the server rejected our request due to an error in our request: {message}"
    )


def _parent(document: Any, tokens: list[str], path: str) -> Any:
    node = document
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, path, for_insert=False)]
        else:
            raise _patch_error(f"path {path!r} does not exist")
    return node


def _get(document: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return document
    parent = _parent(document, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _patch_error(f"path {path!r} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, path, for_insert=False)]
    raise _patch_error(f"path {path!r} does not exist")


def _add(document: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _parent(document, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, path, for_insert=True), value)
    else:
        raise _patch_error(f"path {path!r} does not exist")
    return document


def _remove(document: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise _patch_error("cannot remove the whole document")
    parent = _parent(document, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _patch_error(f"path {path!r} does not exist")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, path, for_insert=False)]
    else:
        raise _patch_error(f"path {path!r} does not exist")
    return document


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test, applied in order to a copy of ``target``."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a JSON array of operations")
    document = copy.deepcopy(target)
    for number, operation in enumerate(operations):
        if not isinstance(operation, dict) or not isinstance(operation.get("op"), str):
            raise bad_request(f"json patch operation {number} must be an object with an 'op'")
        op = operation["op"]
        path = operation.get("path")
        if not isinstance(path, str):
            raise bad_request(f"json patch operation {number} ({op}) needs a string 'path'")
        if op in ("add", "replace", "test") and "value" not in operation:
            raise bad_request(f"json patch operation {number} ({op}) needs a 'value'")
        if op == "add":
            document = _add(document, path, copy.deepcopy(operation["value"]))
        elif op == "remove":
            document = _remove(document, path)
        elif op == "replace":
            _get(document, path)  # must exist
            document = (
                _add(_remove(document, path), path, copy.deepcopy(operation["value"]))
                if _pointer(path)
                else copy.deepcopy(operation["value"])
            )
        elif op in ("move", "copy"):
            source = operation.get("from")
            if not isinstance(source, str):
                raise bad_request(f"json patch operation {number} ({op}) needs a string 'from'")
            value = copy.deepcopy(_get(document, source))
            if op == "move":
                document = _remove(document, source)
            document = _add(document, path, value)
        elif op == "test":
            if _get(document, path) != operation["value"]:
                raise _patch_error(f"testing value {path!r} failed")
        else:
            raise bad_request(f"json patch operation {number}: unknown op {op!r}")
    return document
