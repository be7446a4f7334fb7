"""The services pass: allocation, one cluster per Service port, and the L4 view of every Service.

Every Service port gets a cluster (``ns/name:port``, protocol appended when not TCP), whether or not an
Ingress refers to it, because the L4 planes (ClusterIP, NodePort, LoadBalancer) route to it too.
ExternalName Services give clusters with ``external_name`` and no endpoints.

Addresses come from the allocator's answer (``translate.allocation.allocate``): it honours what the
spec asks for and hands out the rest, so the pass reads effective values only from ``Allocations``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast

from kubegate.ir.model import Cluster, L4Port, L4Service, Protocol, cluster_name
from kubegate.objects.kinds import Service, ServiceBackendPort, ServicePort
from kubegate.objects.meta import ObjectKey
from kubegate.translate.allocation import allocate
from kubegate.translate.context import Allocations, Diagnostic, Options

ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]
SERVICE_TYPES: tuple[ServiceType, ...] = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")
DEFAULT_AFFINITY_TIMEOUT = 10800


def service_key(namespace: str, name: str) -> ObjectKey:
    return ObjectKey("Service", namespace, name)


def port_cluster(namespace: str, name: str, port: ServicePort) -> str:
    return cluster_name(namespace, name, port.port, port.protocol)


def find_port(service: Service, backend_port: ServiceBackendPort) -> ServicePort | None:
    """The Service port an Ingress backend names: by name, else by number (TCP preferred, as HTTP is)."""
    ports = service.spec.ports
    if backend_port.name:
        return next((port for port in ports if port.name == backend_port.name), None)
    candidates = [port for port in ports if port.port == backend_port.number]
    candidates.sort(key=lambda port: port.protocol != "TCP")
    return candidates[0] if candidates else None


def handles_load_balancer(service: Service, options: Options) -> bool:
    """LoadBalancer Services whose class is unset or ours get addresses (and status) from us."""
    cls = service.spec.load_balancer_class
    return service.spec.type == "LoadBalancer" and (cls is None or cls == options.load_balancer_class)


@dataclass(frozen=True, slots=True)
class ServicesResult:
    # cluster name -> Cluster, for every valid port of every Service
    clusters: dict[str, Cluster]
    services: tuple[L4Service, ...]
    allocations: Allocations
    service_status: dict[tuple[str, str], tuple[str, ...]]
    diagnostics: tuple[Diagnostic, ...]


def _valid_ports(service: Service, diagnostics: list[Diagnostic]) -> list[tuple[int, ServicePort]]:
    key = service_key(service.metadata.namespace, service.metadata.name)
    valid: list[tuple[int, ServicePort]] = []
    for index, port in enumerate(service.spec.ports):
        if port.protocol not in PROTOCOLS:
            diagnostics.append(
                Diagnostic(
                    key,
                    f"spec.ports[{index}].protocol",
                    "error",
                    f"unsupported protocol {port.protocol!r} (supported: TCP, UDP, SCTP); port skipped",
                )
            )
            continue
        if not 1 <= port.port <= 65535:
            diagnostics.append(
                Diagnostic(
                    key, f"spec.ports[{index}].port", "error", f"port {port.port} is out of range 1-65535"
                )
            )
            continue
        valid.append((index, port))
    return valid


def _l4_service(
    service: Service,
    allocations: Allocations,
    options: Options,
    clusters: dict[str, Cluster],
    diagnostics: list[Diagnostic],
) -> L4Service:
    spec = service.spec
    namespace, name = service.metadata.namespace, service.metadata.name
    key = service_key(namespace, name)
    holder = f"{namespace}/{name}"
    kind: ServiceType = "ClusterIP"
    if spec.type in SERVICE_TYPES:
        kind = spec.type
    else:
        diagnostics.append(
            Diagnostic(key, "spec.type", "error", f"unknown Service type {spec.type!r}; treated as ClusterIP")
        )
    headless = spec.cluster_ip == "None" or (spec.cluster_ips[:1] == ("None",))
    cluster_ips: tuple[str, ...] = ()
    if kind != "ExternalName" and not headless:
        # only what the allocator granted: a spec value it refused (outside the CIDR, taken) is not served
        allocated = allocations.cluster_ips.get(holder)
        cluster_ips = (allocated,) if allocated else ()

    ports: list[L4Port] = []
    for _index, port in _valid_ports(service, diagnostics):
        cluster = port_cluster(namespace, name, port)
        clusters[cluster] = Cluster(
            name=cluster,
            service=holder,
            port=port.port,
            protocol=cast(Protocol, port.protocol),
            port_name=port.name,
            external_name=spec.external_name or None if kind == "ExternalName" else None,
        )
        node_port: int | None = None
        if kind == "NodePort" or (kind == "LoadBalancer" and spec.allocate_load_balancer_node_ports):
            node_port = allocations.node_ports.get(f"{holder}:{port.port}/{port.protocol}")
        ports.append(
            L4Port(
                name=port.name,
                protocol=cast(Protocol, port.protocol),
                port=port.port,
                cluster=cluster,
                node_port=node_port,
            )
        )

    lb_ips: tuple[str, ...] = ()
    if kind == "LoadBalancer":
        if handles_load_balancer(service, options):
            allocated_lb = allocations.load_balancer_ips.get(holder)
            lb_ips = (allocated_lb,) if allocated_lb else ()
        else:
            # another implementation owns it: route what it published, as kube-proxy does
            lb_ips = tuple(ing.ip for ing in service.status.load_balancer.ingress if ing.ip)

    affinity: Literal["None", "ClientIP"] = "ClientIP" if spec.session_affinity == "ClientIP" else "None"
    timeout = DEFAULT_AFFINITY_TIMEOUT
    config = spec.session_affinity_config
    if config is not None and config.client_ip is not None and config.client_ip.timeout_seconds is not None:
        timeout = config.client_ip.timeout_seconds
    policy: Literal["Cluster", "Local"] = "Local" if spec.external_traffic_policy == "Local" else "Cluster"
    return L4Service(
        name=holder,
        type=kind,
        cluster_ips=cluster_ips,
        external_ips=tuple(sorted(spec.external_ips)),
        load_balancer_ips=lb_ips,
        ports=tuple(ports),
        session_affinity=affinity,
        affinity_timeout_seconds=timeout,
        external_traffic_policy=policy,
        headless=headless,
    )


def translate_services(
    services: Mapping[tuple[str, str], Service], previous: Allocations, options: Options
) -> ServicesResult:
    """Allocate, then describe every Service for the L4 planes and as clusters for the L7 one."""
    ordered = {key: services[key] for key in sorted(services)}
    allocations, allocation_diagnostics = allocate(ordered, previous, options)
    diagnostics = list(allocation_diagnostics)
    clusters: dict[str, Cluster] = {}
    l4: list[L4Service] = []
    status: dict[tuple[str, str], tuple[str, ...]] = {}
    for key, service in ordered.items():
        described = _l4_service(service, allocations, options, clusters, diagnostics)
        l4.append(described)
        if handles_load_balancer(service, options):
            status[key] = described.load_balancer_ips
    return ServicesResult(
        clusters=clusters,
        services=tuple(l4),
        allocations=allocations,
        service_status=status,
        diagnostics=tuple(diagnostics),
    )
