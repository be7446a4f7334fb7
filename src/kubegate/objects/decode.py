"""Turn one decoded YAML/JSON document (a dict) into a typed object, or an error naming the field.

This first version checks shape and types only (msgspec); objects.validate adds the rules the API
server enforces.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from kubegate.objects.kinds import (
    Endpoints,
    EndpointSlice,
    Ingress,
    IngressClass,
    KubeObject,
    Pod,
    Secret,
    Service,
)
from kubegate.objects.legacy import LEGACY_INGRESS_VERSIONS, LegacyIngress, to_v1

# (apiVersion, kind) -> type
KINDS: dict[tuple[str, str], type[Any]] = {
    ("v1", "Service"): Service,
    ("v1", "Endpoints"): Endpoints,
    ("discovery.k8s.io/v1", "EndpointSlice"): EndpointSlice,
    ("v1", "Pod"): Pod,
    ("networking.k8s.io/v1", "Ingress"): Ingress,
    ("networking.k8s.io/v1", "IngressClass"): IngressClass,
    ("v1", "Secret"): Secret,
}
for _version in LEGACY_INGRESS_VERSIONS:
    KINDS[(_version, "Ingress")] = LegacyIngress


class DecodeError(Exception):
    """A document that is not a valid object: ``field`` is a path like ``spec.ports[0].port``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class UnknownKind(Exception):
    def __init__(self, api_version: str, kind: str) -> None:
        super().__init__(f"{kind} ({api_version}) is not a kind kubegate reads")
        self.api_version = api_version
        self.kind = kind


_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _field_of(error: msgspec.ValidationError) -> tuple[str, str]:
    text = str(error)
    match = _MSGSPEC_PATH.search(text)
    if match is None:
        return "", text
    path = match.group("path").lstrip(".")
    return path, text[: match.start()]


def decode_object(document: object) -> KubeObject:
    """Decode one document. Raises DecodeError or UnknownKind."""
    if not isinstance(document, dict):
        raise DecodeError("", f"expected an object (a mapping), got {type(document).__name__}")
    api_version = document.get("apiVersion")
    kind = document.get("kind")
    if not isinstance(api_version, str) or not api_version:
        raise DecodeError("apiVersion", "required")
    if not isinstance(kind, str) or not kind:
        raise DecodeError("kind", "required")
    target = KINDS.get((api_version, kind))
    if target is None:
        raise UnknownKind(api_version, kind)
    try:
        obj = msgspec.convert(document, target)
    except msgspec.ValidationError as error:
        field, message = _field_of(error)
        raise DecodeError(field, message) from None
    if isinstance(obj, LegacyIngress):
        return to_v1(obj)
    result: KubeObject = obj
    return result
