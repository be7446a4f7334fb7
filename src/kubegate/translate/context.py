"""What the translator takes besides the snapshot, and what it gives back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import msgspec

from kubegate.ir.model import EndpointTable, RoutingTable
from kubegate.objects.meta import ObjectKey

DEFAULT_CONTROLLER_NAME = "kubegate.io/ingress-controller"
DEFAULT_LOAD_BALANCER_CLASS = "kubegate.io/load-balancer"


@dataclass(frozen=True, slots=True)
class Pool:
    """An address pool for LoadBalancer Services, like MetalLB's IPAddressPool.

    ``addresses`` holds CIDRs ("127.0.100.0/24") and inclusive ranges ("10.0.0.10-10.0.0.20").
    A pool restricted to namespaces or loadBalancerClasses serves only those Services.
    """

    name: str
    addresses: tuple[str, ...]
    namespaces: tuple[str, ...] = ()
    service_classes: tuple[str, ...] = ()
    auto_assign: bool = True
    # MetalLB's avoidBuggyIPs: never hand out IPv4 addresses ending in .0 or .255
    avoid_buggy_ips: bool = False


EMBEDDED_POOL = Pool(name="embedded", addresses=("127.0.100.0/24",), avoid_buggy_ips=True)


@dataclass(frozen=True, slots=True)
class Options:
    controller_name: str = DEFAULT_CONTROLLER_NAME
    # Files were given to kubegate on purpose, so their class-less Ingresses are ours; from the API server
    # only with --watch-ingress-without-class, as ingress-nginx does.
    serve_ingress_without_class: bool = True
    # controller-wide default backend, "namespace/name:port" (port number or name)
    default_backend: str | None = None
    service_cidr: str = "10.96.0.0/12"
    node_port_range: tuple[int, int] = (30000, 32767)
    pools: tuple[Pool, ...] = (EMBEDDED_POOL,)
    # LoadBalancer Services whose loadBalancerClass is neither unset nor this are left to others
    load_balancer_class: str = DEFAULT_LOAD_BALANCER_CLASS
    # written to the status of every Ingress we serve
    publish_addresses: tuple[str, ...] = ()
    # From the API server, ClusterIPs and nodePorts were already allocated by it: take spec.clusterIP and
    # spec.ports[].nodePort as given instead of allocating (LoadBalancer IPs are still ours to hand out).
    addresses_from_spec: bool = False


class Allocations(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Addresses and ports handed out, keyed by holder. Persisted across restarts by kubegate.state.

    Keys: cluster_ips and load_balancer_ips by "namespace/name"; node_ports by
    "namespace/name:port/PROTOCOL".
    """

    cluster_ips: dict[str, str] = {}
    node_ports: dict[str, int] = {}
    load_balancer_ips: dict[str, str] = {}


Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True, order=True)
class Diagnostic:
    """A problem with one object, found while translating. The object is otherwise served as well as
    it can be (or skipped, for errors)."""

    object: ObjectKey
    field: str
    severity: Severity
    message: str

    def __str__(self) -> str:
        where = f"{self.object} {self.field}" if self.field else str(self.object)
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Translation:
    routing: RoutingTable
    endpoints: EndpointTable
    allocations: Allocations
    # status.loadBalancer.ingress IPs per LoadBalancer Service we handle, (namespace, name) -> IPs
    service_status: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    # Ingresses of our class, (namespace, name) -> addresses for status.loadBalancer.ingress
    ingress_status: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    diagnostics: tuple[Diagnostic, ...] = ()
