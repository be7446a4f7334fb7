"""A consistent view of every object a source holds: the translator's only input besides options."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
from kubegate.objects.meta import ObjectKey

# (namespace, name); IngressClass is cluster-scoped and keyed by name alone.
NamespacedName = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Objects by kind. Never mutated: a change produces a new Snapshot that shares unchanged objects,
    which is what lets the translator reuse work done for them."""

    services: Mapping[NamespacedName, Service] = field(default_factory=dict)
    endpoints: Mapping[NamespacedName, Endpoints] = field(default_factory=dict)
    endpoint_slices: Mapping[NamespacedName, EndpointSlice] = field(default_factory=dict)
    pods: Mapping[NamespacedName, Pod] = field(default_factory=dict)
    ingresses: Mapping[NamespacedName, Ingress] = field(default_factory=dict)
    ingress_classes: Mapping[str, IngressClass] = field(default_factory=dict)
    secrets: Mapping[NamespacedName, Secret] = field(default_factory=dict)

    def find(self, key: ObjectKey) -> KubeObject | None:
        """The object with this key, when the snapshot holds it."""
        if key.kind == "IngressClass":
            return self.ingress_classes.get(key.name)
        by_kind: dict[str, Mapping[NamespacedName, KubeObject]] = {
            "Service": self.services,
            "Endpoints": self.endpoints,
            "EndpointSlice": self.endpoint_slices,
            "Pod": self.pods,
            "Ingress": self.ingresses,
            "Secret": self.secrets,
        }
        by_name = by_kind.get(key.kind)
        return None if by_name is None else by_name.get((key.namespace, key.name))

    @staticmethod
    def of(objects: Iterable[KubeObject]) -> Snapshot:
        """Build a snapshot from objects; a later object with the same key replaces an earlier one."""
        services: dict[NamespacedName, Service] = {}
        endpoints: dict[NamespacedName, Endpoints] = {}
        slices: dict[NamespacedName, EndpointSlice] = {}
        pods: dict[NamespacedName, Pod] = {}
        ingresses: dict[NamespacedName, Ingress] = {}
        classes: dict[str, IngressClass] = {}
        secrets: dict[NamespacedName, Secret] = {}
        for obj in objects:
            key = (obj.metadata.namespace, obj.metadata.name)
            if isinstance(obj, Service):
                services[key] = obj
            elif isinstance(obj, Endpoints):
                endpoints[key] = obj
            elif isinstance(obj, EndpointSlice):
                slices[key] = obj
            elif isinstance(obj, Pod):
                pods[key] = obj
            elif isinstance(obj, Ingress):
                ingresses[key] = obj
            elif isinstance(obj, IngressClass):
                classes[obj.metadata.name] = obj
            else:
                secrets[key] = obj
        return Snapshot(services, endpoints, slices, pods, ingresses, classes, secrets)
