"""Endpoints per Service port, computed the way the Kubernetes endpoints controller does.

A Service with a selector gets the Pods of its namespace whose labels match it, that have an IP, are
not finished (phase Succeeded/Failed) and are Ready (or any state, with ``publishNotReadyAddresses``).
A named ``targetPort`` is looked up per pod among its containers' ports (name and protocol); a pod
without that port is left out, exactly as the endpoints controller leaves it out. An unset targetPort
means the Service port.

A Service without a selector takes its endpoints from the Endpoints object of the same name (ready
``addresses`` only; the port matched by name, or the only port when both sides have one) and from the
EndpointSlices labelled ``kubernetes.io/service-name``: endpoints whose ``conditions.ready`` is true or
unset, on the slice port with the Service port's name and protocol. Both are unioned and deduplicated by
(ip, port).

Differences from Kubernetes, on purpose or for lack of data:
- An empty selector (``selector: {}``) is treated as no selector: the API server stores it as nil, and
  the endpoints controller then manages nothing.
- For Services with a selector we compute endpoints from Pods and ignore the EndpointSlices the cluster
  publishes for them (they say the same thing, later).
- Pods being deleted (``deletionTimestamp``) are not modelled; terminating slice endpoints are dropped
  because they are not ready.
- Only the first pod IP is used (no dual-stack endpoint families). ``zone`` is set only from slices
  (pod zones come from Node labels, which kubegate does not read).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from kubegate.ir.model import Endpoint
from kubegate.objects.kinds import (
    SERVICE_NAME_LABEL,
    Endpoints,
    EndpointSlice,
    ObjectReference,
    Pod,
    Service,
    ServicePort,
)
from kubegate.translate.services import port_cluster

NamespacedName = tuple[str, str]


@dataclass(frozen=True, slots=True)
class EndpointSources:
    """Indexes over the snapshot's Pods and EndpointSlices, so each Service looks at its own only."""

    # (namespace, label key, label value) -> pods carrying that label
    pods_by_label: Mapping[tuple[str, str, str], tuple[Pod, ...]]
    endpoints: Mapping[NamespacedName, Endpoints]
    # (namespace, service name) -> slices
    slices_by_service: Mapping[NamespacedName, tuple[EndpointSlice, ...]]

    @staticmethod
    def index(
        pods: Mapping[NamespacedName, Pod],
        endpoints: Mapping[NamespacedName, Endpoints],
        slices: Mapping[NamespacedName, EndpointSlice],
    ) -> EndpointSources:
        by_label: defaultdict[tuple[str, str, str], list[Pod]] = defaultdict(list)
        for (namespace, _name), pod in pods.items():
            for label, value in pod.metadata.labels.items():
                by_label[(namespace, label, value)].append(pod)
        by_service: defaultdict[NamespacedName, list[EndpointSlice]] = defaultdict(list)
        for (namespace, _name), endpoint_slice in slices.items():
            service = endpoint_slice.metadata.labels.get(SERVICE_NAME_LABEL)
            if service:
                by_service[(namespace, service)].append(endpoint_slice)
        return EndpointSources(
            pods_by_label={key: tuple(found) for key, found in by_label.items()},
            endpoints=endpoints,
            slices_by_service={key: tuple(found) for key, found in by_service.items()},
        )


def _pod_ip(pod: Pod) -> str:
    if pod.status.pod_ip:
        return pod.status.pod_ip
    return pod.status.pod_ips[0].ip if pod.status.pod_ips else ""


def _pod_serves(pod: Pod, publish_not_ready: bool) -> bool:
    if pod.status.phase in ("Succeeded", "Failed") or not _pod_ip(pod):
        return False
    if publish_not_ready:
        return True
    return any(cond.type == "Ready" and cond.status == "True" for cond in pod.status.conditions)


def _target_port(pod: Pod, port: ServicePort) -> int | None:
    target = port.target_port
    if target is None:
        return port.port
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    for container in pod.spec.containers:
        for container_port in container.ports:
            if container_port.name == target and container_port.protocol == port.protocol:
                return container_port.container_port
    return None


def _selected_pods(service: Service, sources: EndpointSources) -> list[Pod]:
    selector = service.spec.selector or {}
    namespace = service.metadata.namespace
    # start from the rarest label so a selector like {app: x, tier: web} scans few pods
    candidate_lists = [
        sources.pods_by_label.get((namespace, key, value), ()) for key, value in selector.items()
    ]
    smallest = min(candidate_lists, key=len)
    items = selector.items()
    return [pod for pod in smallest if all(pod.metadata.labels.get(k) == v for k, v in items)]


def _ref_pod(ref: ObjectReference | None) -> str:
    if ref is None or ref.kind != "Pod" or not ref.name:
        return ""
    return f"{ref.namespace}/{ref.name}"


def _from_pods(service: Service, pods: list[Pod], port: ServicePort) -> list[Endpoint]:
    found: list[Endpoint] = []
    for pod in pods:
        if not _pod_serves(pod, service.spec.publish_not_ready_addresses):
            continue
        target = _target_port(pod, port)
        if target is None:
            continue
        found.append(
            Endpoint(
                ip=_pod_ip(pod),
                port=target,
                node=pod.spec.node_name,
                pod=f"{pod.metadata.namespace}/{pod.metadata.name}",
            )
        )
    return found


def _from_endpoints(service: Service, endpoints: Endpoints | None, port: ServicePort) -> list[Endpoint]:
    if endpoints is None:
        return []
    found: list[Endpoint] = []
    only_port = len(service.spec.ports) == 1
    for subset in endpoints.subsets:
        chosen = next(
            (p.port for p in subset.ports if p.name == port.name and p.protocol == port.protocol),
            None,
        )
        if (
            chosen is None
            and only_port
            and len(subset.ports) == 1
            and subset.ports[0].protocol == port.protocol
        ):
            chosen = subset.ports[0].port
        if chosen is None:
            continue
        for address in subset.addresses:
            found.append(
                Endpoint(
                    ip=address.ip, port=chosen, node=address.node_name or "", pod=_ref_pod(address.target_ref)
                )
            )
    return found


def _from_slices(slices: tuple[EndpointSlice, ...], port: ServicePort) -> list[Endpoint]:
    found: list[Endpoint] = []
    for endpoint_slice in slices:
        if endpoint_slice.address_type not in ("IPv4", "IPv6"):
            continue
        chosen = next(
            (
                p.port
                for p in endpoint_slice.ports or ()
                if (p.name or "") == port.name
                and (p.protocol or "TCP") == port.protocol
                and p.port is not None
            ),
            None,
        )
        if chosen is None:
            continue
        for endpoint in endpoint_slice.endpoints:
            if endpoint.conditions.ready is False:
                continue
            for address in endpoint.addresses:
                found.append(
                    Endpoint(
                        ip=address,
                        port=chosen,
                        node=endpoint.node_name or "",
                        zone=endpoint.zone or "",
                        pod=_ref_pod(endpoint.target_ref),
                    )
                )
    return found


def _deduplicated(found: list[Endpoint]) -> tuple[Endpoint, ...]:
    """One endpoint per (ip, port); when Endpoints and a slice both list it, keep what either knows."""
    unique: dict[tuple[str, int], Endpoint] = {}
    for endpoint in sorted(found, key=lambda e: (e.ip, e.port, e.pod, e.node, e.zone)):
        seen = unique.get((endpoint.ip, endpoint.port))
        if seen is None:
            unique[(endpoint.ip, endpoint.port)] = endpoint
        elif seen != endpoint:
            unique[(endpoint.ip, endpoint.port)] = Endpoint(
                ip=seen.ip,
                port=seen.port,
                node=seen.node or endpoint.node,
                zone=seen.zone or endpoint.zone,
                pod=seen.pod or endpoint.pod,
            )
    return tuple(unique.values())


def service_endpoints(service: Service, sources: EndpointSources) -> dict[str, tuple[Endpoint, ...]]:
    """Ready endpoints for each port (cluster) of one Service; ExternalName Services have none."""
    namespace, name = service.metadata.namespace, service.metadata.name
    result: dict[str, tuple[Endpoint, ...]] = {}
    if service.spec.type == "ExternalName":
        for port in service.spec.ports:
            result[port_cluster(namespace, name, port)] = ()
        return result
    pods = _selected_pods(service, sources) if service.spec.selector else None
    endpoints = sources.endpoints.get((namespace, name))
    slices = sources.slices_by_service.get((namespace, name), ())
    for port in service.spec.ports:
        if pods is not None:
            found = _from_pods(service, pods, port)
        else:
            found = _from_endpoints(service, endpoints, port) + _from_slices(slices, port)
        result[port_cluster(namespace, name, port)] = _deduplicated(found)
    return result
