"""Canonical dict/YAML form of the IR: the golden-file format and what ``/debug/ir`` shows.

Deterministic: mapping keys are sorted, fields equal to their defaults are left out (the IR structs
use ``omit_defaults``), and the same IR always dumps to the same text. ``ir`` imports nothing from the
rest of kubegate, so a translation result is described by the ``TranslationLike`` protocol rather than
by its class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import msgspec
import yaml

from kubegate.ir.model import EndpointTable, RoutingTable


class DiagnosticLike(Protocol):
    @property
    def object(self) -> object: ...
    @property
    def field(self) -> str: ...
    @property
    def severity(self) -> str: ...
    @property
    def message(self) -> str: ...


class TranslationLike(Protocol):
    @property
    def routing(self) -> RoutingTable: ...
    @property
    def endpoints(self) -> EndpointTable: ...
    @property
    def allocations(self) -> object: ...
    @property
    def service_status(self) -> Mapping[tuple[str, str], tuple[str, ...]]: ...
    @property
    def ingress_status(self) -> Mapping[tuple[str, str], tuple[str, ...]]: ...
    @property
    def diagnostics(self) -> Iterable[DiagnosticLike]: ...


def canonical(value: object) -> object:
    """Plain data (dicts, lists, str, int, bool, None) with every mapping's keys sorted."""
    return _sorted(msgspec.to_builtins(value))


def _sorted(value: object) -> object:
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _status(status: Mapping[tuple[str, str], tuple[str, ...]]) -> dict[str, list[str]]:
    return {f"{namespace}/{name}": list(addresses) for (namespace, name), addresses in sorted(status.items())}


def translation_dict(translation: TranslationLike) -> dict[str, object]:
    """The whole translation as plain data, in a fixed section order."""
    return {
        "routing": canonical(translation.routing),
        "endpoints": canonical(translation.endpoints.clusters),
        "allocations": canonical(translation.allocations),
        "service_status": _status(translation.service_status),
        "ingress_status": _status(translation.ingress_status),
        "diagnostics": [
            {
                "object": str(diagnostic.object),
                "field": diagnostic.field,
                "severity": diagnostic.severity,
                "message": diagnostic.message,
            }
            for diagnostic in translation.diagnostics
        ],
    }


def to_yaml(data: object) -> str:
    """YAML text for plain data, keeping the key order given (callers pass canonical data)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def dump_translation(translation: TranslationLike) -> str:
    return to_yaml(translation_dict(translation))
