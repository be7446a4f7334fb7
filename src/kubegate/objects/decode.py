"""Turn one decoded YAML/JSON document (a dict) into a typed object, or an error naming the field.

Three steps: the document must be JSON-shaped (``_check_shape``: strings as keys, bounded size and depth,
so aliases and self-referencing YAML cannot hang or crash the decoder); msgspec converts it to the kind's
type, its errors reworded for users; ``objects.validate`` applies the API server's rules. Legacy Ingress
versions are converted to v1 by ``objects.legacy`` and their errors name the fields the user wrote.
"""

from __future__ import annotations

import base64
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
from kubegate.objects.legacy import LEGACY_INGRESS_VERSIONS, LegacyIngress, legacy_field, to_v1
from kubegate.objects.validate import FieldError, validate

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

# Far above any real object, low enough that a YAML alias bomb fails fast instead of hanging.
MAX_VALUES = 200_000
MAX_DEPTH = 64


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


# --------------------------------------------------------------------------------------------------
# describing values and types in words


def describe(value: object) -> str:
    """``a string "x"``, ``an integer 5``, ``a list``: how a value is named in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean {str(value).lower()}"
    if isinstance(value, int):
        text = str(value) if value.bit_length() < 64 else "(a huge number)"
        return f"an integer {text}"
    if isinstance(value, float):
        return f"a number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return "a string " + msgspec.json.encode(shown).decode()
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} value"


_TYPE_WORDS = {
    "int": "an integer",
    "str": "a string",
    "bool": "a boolean (true or false)",
    "float": "a number",
    "array": "a list",
    "object": "a mapping",
}


def _expected(types: str) -> str:
    words = [
        _TYPE_WORDS.get(name.strip(), name.strip()) for name in types.split("|") if name.strip() != "null"
    ]
    return " or ".join(words) if words else "null"


# --------------------------------------------------------------------------------------------------
# shape


def _check_shape(document: object) -> None:
    """Only JSON types, string keys, bounded depth and size; raises DecodeError naming the field."""
    count = 0
    # (value, path, depth); iterative so depth is ours to bound, not Python's recursion limit
    stack: list[tuple[object, str, int]] = [(document, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise DecodeError(
                path, f"the document has more than {MAX_VALUES} values (YAML aliases expanding?)"
            )
        if depth > MAX_DEPTH:
            raise DecodeError(path, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise DecodeError(path, f"keys must be strings, got {describe(key)} (quote it)")
                stack.append((item, f"{path}.{key}" if path else key, depth + 1))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                stack.append((item, f"{path}[{index}]", depth + 1))
        elif value is not None and not isinstance(value, str | int | float | bool):
            raise DecodeError(path, f"expected a JSON value, got {describe(value)}")


def _lookup(document: object, path: str) -> tuple[bool, object]:
    """The value at a msgspec path (``.spec.ports[0].port``) in the raw document, if present."""
    current = document
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        if name and isinstance(current, dict) and name in current:
            current = current[name]
        elif index and isinstance(current, list) and int(index) < len(current):
            current = current[int(index)]
        else:
            return False, None
    return True, current


_MSGSPEC_AT = re.compile(r" - at `(?P<key>key` in `)?\$(?P<path>[^`]*)`$")
_EXPECTED = re.compile(r"Expected `(?P<expected>[^`]+)`(, got `(?P<got>[^`]+)`)?")
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]+)`")


def _reword(error: msgspec.ValidationError, document: object) -> DecodeError:
    text = str(error)
    match = _MSGSPEC_AT.search(text)
    raw_path = match.group("path") if match else ""
    about_key = bool(match and match.group("key"))
    message = text[: match.start()] if match else text
    value_at: tuple[bool, object] | None = None
    if raw_path.endswith("[...]"):
        # a dict value (labels, annotations, data): find the key whose value has the wrong type
        raw_path = raw_path.removesuffix("[...]")
        found, mapping = _lookup(document, raw_path)
        if found and isinstance(mapping, dict):
            bad = next((k for k, v in mapping.items() if not isinstance(v, str)), None)
            if bad is not None:
                raw_path += f"[{bad}]"
                value_at = (True, mapping[bad])
    field = raw_path.lstrip(".")
    if missing := _MISSING.match(message):
        return DecodeError(f"{field}.{missing['name']}" if field else missing["name"], "required")
    if expected := _EXPECTED.match(message):
        want = _expected(expected["expected"])
        if about_key:
            return DecodeError(field, f"keys must be {want}")
        found, value = value_at or _lookup(document, raw_path)
        got = describe(value) if found else _expected(expected["got"] or "value")
        return DecodeError(field, f"expected {want}, got {got}")
    return DecodeError(field, message[:1].lower() + message[1:])


# --------------------------------------------------------------------------------------------------


def _normalise(obj: KubeObject) -> KubeObject:
    """What the API server does on write that routing depends on."""
    if isinstance(obj, IngressClass) and obj.metadata.namespace:
        # cluster-scoped: a namespace in the manifest is ignored
        return msgspec.structs.replace(obj, metadata=msgspec.structs.replace(obj.metadata, namespace=""))
    if isinstance(obj, Secret) and obj.string_data:
        data = dict(obj.data)
        for key, value in obj.string_data.items():
            data[key] = base64.b64encode(value.encode()).decode()
        return msgspec.structs.replace(obj, data=data, string_data={})
    return obj


def convert_object(document: object) -> KubeObject:
    """Shape and types only (no API rules). Raises DecodeError or UnknownKind."""
    if not isinstance(document, dict):
        raise DecodeError(
            "", f"expected an object (a mapping with apiVersion and kind), got {describe(document)}"
        )
    api_version = document.get("apiVersion")
    kind = document.get("kind")
    if not isinstance(api_version, str) or not api_version:
        raise DecodeError(
            "apiVersion",
            "required" if api_version is None else f"expected a string, got {describe(api_version)}",
        )
    if not isinstance(kind, str) or not kind:
        raise DecodeError("kind", "required" if kind is None else f"expected a string, got {describe(kind)}")
    target = KINDS.get((api_version, kind))
    if target is None:
        raise UnknownKind(api_version, kind)
    _check_shape(document)
    try:
        obj = msgspec.convert(document, target)
    except msgspec.ValidationError as error:
        raise _reword(error, document) from None
    if isinstance(obj, LegacyIngress):
        return to_v1(obj)
    result: KubeObject = obj
    return _normalise(result)


def check_object(document: object) -> tuple[KubeObject, list[FieldError]]:
    """Decode and validate: the object and every rule it breaks, field paths as the user wrote them.

    Raises DecodeError (the document does not have the kind's shape) or UnknownKind.
    """
    obj = convert_object(document)
    errors = validate(obj)
    if isinstance(document, dict) and document.get("apiVersion") in LEGACY_INGRESS_VERSIONS:
        errors = [FieldError(legacy_field(e.field), e.message) for e in errors]
    return obj, errors


def decode_object(document: object) -> KubeObject:
    """Decode and validate one document. Raises DecodeError (for the first problem) or UnknownKind."""
    obj, errors = check_object(document)
    if errors:
        raise DecodeError(errors[0].field, errors[0].message)
    return obj
