"""List pagination as kube-apiserver does it: ``limit`` and opaque ``continue`` tokens.

Every page of one list shows the same snapshot: the token carries the list's resourceVersion and the key
of the last item sent, and the next page is cut from the state at that version (rebuilt from history).
Once history before that version is compacted, continuing is 410 Expired, and the client must list again.
``remainingItemCount`` is reported when no selector filters the list, as kube does.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from tests.fakes import errors
from tests.fakes.errors import ApiError

Key = tuple[str, str]

TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter."
)


@dataclass(frozen=True, slots=True)
class Continuation:
    resource_version: int
    after: Key  # the last key already sent


def encode(continuation: Continuation) -> str:
    document = {"v": "meta.k8s.io/v1", "rv": continuation.resource_version, "start": list(continuation.after)}
    return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).decode()


def decode(token: str) -> Continuation:
    try:
        document = json.loads(base64.urlsafe_b64decode(token.encode()))
        version = document["rv"]
        namespace, name = document["start"]
        if document.get("v") != "meta.k8s.io/v1" or not isinstance(version, int):
            raise ValueError("unknown token version")
        return Continuation(version, (str(namespace), str(name)))
    except (binascii.Error, ValueError, KeyError, TypeError) as error:
        raise errors.bad_request(f"continue key is not valid: {error}") from None


def parse_limit(value: str) -> int | None:
    if value in ("", "0"):
        return None
    if not value.isdigit():
        raise errors.bad_request(f"invalid limit {value!r}: expected a non-negative integer")
    return int(value)


def expired_continuation() -> ApiError:
    return ApiError(410, "Expired", TOO_OLD)


def key_of(obj: dict[str, Any]) -> Key:
    metadata = obj.get("metadata") or {}
    return (str(metadata.get("namespace", "")), str(metadata.get("name", "")))


def cut(
    items: list[dict[str, Any]], limit: int | None, after: Key | None, version: int, *, count_remaining: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One page of ``items`` (in key order) after ``after``, and the list metadata to send with it."""
    if after is not None:
        items = [item for item in items if key_of(item) > after]
    metadata: dict[str, Any] = {"resourceVersion": str(version)}
    if limit is None or len(items) <= limit:
        return items, metadata
    page = items[:limit]
    metadata["continue"] = encode(Continuation(version, key_of(page[-1])))
    if count_remaining:
        metadata["remainingItemCount"] = len(items) - limit
    return page, metadata
