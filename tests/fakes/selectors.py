"""Label and field selectors, with the API server's grammar and matching rules.

Label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists), ``!k``
(does not exist), ``k>n`` / ``k<n`` (integer comparison), joined by commas (AND). ``!=`` and ``notin`` match
objects that lack the label, as in kube. Field selectors: ``field=v``, ``field==v``, ``field!=v`` over
``metadata.name`` and ``metadata.namespace`` (every kind) plus the few per-kind fields the real server
supports that matter here; any other field is refused with kube's ``field label not supported`` error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.fakes.errors import ApiError, bad_request

_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SET_FORM = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\(([^()]*)\)\s*$")
_COMPARE = re.compile(r"^\s*([^\s=!<>]+)\s*(==|=|!=|<|>)\s*([^\s=!<>]*)\s*$")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # "in", "notin", "exists", "!", "gt", "lt"
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator == "in":
            return present and labels[self.key] in self.values
        if self.operator == "notin":
            return not present or labels[self.key] not in self.values
        if not present:
            return False
        try:
            actual = int(labels[self.key])
        except ValueError:
            return False
        (bound,) = self.values
        return actual > int(bound) if self.operator == "gt" else actual < int(bound)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses (``a in (x,y),b`` has two requirements)."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _check_key(key: str, whole: str) -> None:
    if not _KEY.match(key):
        raise bad_request(f"unable to parse requirement: invalid label key {key!r} in selector {whole!r}")


def _check_value(value: str, whole: str) -> None:
    if len(value) > 63 or not _VALUE.match(value):
        raise bad_request(f"unable to parse requirement: invalid label value {value!r} in selector {whole!r}")


def parse_label_selector(text: str) -> tuple[Requirement, ...]:
    """Parse a labelSelector query value; an empty string selects everything. Raises ApiError (400)."""
    if not text.strip():
        return ()
    requirements: list[Requirement] = []
    for part in _split_top_level(text):
        stripped = part.strip()
        if not stripped:
            raise bad_request(f"unable to parse requirement: empty requirement in selector {text!r}")
        set_form = _SET_FORM.match(stripped)
        if set_form:
            key, operator, raw_values = set_form.groups()
            _check_key(key, text)
            values = [v.strip() for v in raw_values.split(",")]
            for value in values:
                _check_value(value, text)
            requirements.append(Requirement(key, operator, frozenset(values)))
            continue
        if stripped.startswith("!"):
            key = stripped[1:].strip()
            _check_key(key, text)
            requirements.append(Requirement(key, "!", frozenset()))
            continue
        compare = _COMPARE.match(stripped)
        if compare:
            key, operator, value = compare.groups()
            _check_key(key, text)
            _check_value(value, text)
            if operator in ("<", ">"):
                if not value.lstrip("-").isdigit():
                    raise bad_request(
                        f"unable to parse requirement: for 'gt', 'lt' operators, the value must be an "
                        f"integer, not {value!r}"
                    )
                requirements.append(Requirement(key, "gt" if operator == ">" else "lt", frozenset([value])))
            else:
                requirements.append(
                    Requirement(key, "notin" if operator == "!=" else "in", frozenset([value]))
                )
            continue
        if " " not in stripped:
            _check_key(stripped, text)
            requirements.append(Requirement(stripped, "exists", frozenset()))
            continue
        raise bad_request(f"unable to parse requirement: {stripped!r} in selector {text!r}")
    return tuple(requirements)


def labels_match(requirements: tuple[Requirement, ...], obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(requirement.matches(labels) for requirement in requirements)


def _dig(path: str) -> Callable[[Mapping[str, Any]], str]:
    def get(obj: Mapping[str, Any]) -> str:
        node: Any = obj
        for step in path.split("."):
            node = node.get(step) if isinstance(node, Mapping) else None
        return "" if node is None else str(node)

    return get


# The per-kind extra fields kube-apiserver accepts in fieldSelector (a subset: the ones a client of a
# gateway plausibly uses); metadata.name and metadata.namespace work on every kind.
_EXTRA_FIELDS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec.nodeName", "spec.serviceAccountName", "status.phase", "status.podIP"),
    "Secret": ("type",),
    "Event": (
        "involvedObject.apiVersion",
        "involvedObject.fieldPath",
        "involvedObject.kind",
        "involvedObject.name",
        "involvedObject.namespace",
        "involvedObject.resourceVersion",
        "involvedObject.uid",
        "reason",
        "reportingComponent",
        "type",
    ),
    "Node": ("spec.unschedulable",),
    "Namespace": ("status.phase",),
}


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    equal: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (_dig(self.field)(obj) == self.value) == self.equal


def parse_field_selector(text: str, kind: str) -> tuple[FieldRequirement, ...]:
    if not text.strip():
        return ()
    allowed = ("metadata.name", "metadata.namespace", *_EXTRA_FIELDS.get(kind, ()))
    requirements: list[FieldRequirement] = []
    for part in text.split(","):
        match = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not match:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        field, operator, value = match.groups()
        if field not in allowed:
            raise bad_request(f"field label not supported: {field}")
        requirements.append(FieldRequirement(field, operator != "!=", value))
    return tuple(requirements)


def fields_match(requirements: tuple[FieldRequirement, ...], obj: Mapping[str, Any]) -> bool:
    return all(requirement.matches(obj) for requirement in requirements)


__all__ = [
    "ApiError",
    "FieldRequirement",
    "Requirement",
    "fields_match",
    "labels_match",
    "parse_field_selector",
    "parse_label_selector",
]
