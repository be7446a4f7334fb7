"""Metadata shared by every kind, and the key that names an object."""

from __future__ import annotations

from typing import NamedTuple

import msgspec


class ObjectMeta(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The subset of metav1.ObjectMeta kubegate reads."""

    name: str = ""
    namespace: str = "default"
    uid: str = ""
    resource_version: str = ""
    generation: int = 0
    creation_timestamp: str = ""
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class ObjectKey(NamedTuple):
    """kind/namespace/name: how objects are keyed in the store and named in messages.

    Cluster-scoped kinds (IngressClass) have an empty namespace.
    """

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"


class Origin(NamedTuple):
    """Where an object came from: file (or "<stdin>", or an API URL), document index, first line."""

    source: str
    document: int
    line: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source
