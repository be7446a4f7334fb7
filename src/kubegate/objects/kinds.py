"""Typed, immutable views of the Kubernetes kinds kubegate consumes.

Only the fields kubegate reads are modelled; unknown fields are ignored, as a client of a newer API server
would. Field names follow the API's JSON names (``rename="camel"``, with explicit names where the API
capitalises an acronym such as ``clusterIP``). Defaults mirror the API server's defaulting where it matters
to routing (``protocol: TCP``, ``type: ClusterIP``, ``sessionAffinity: None``).

Legacy Ingress versions are decoded by ``objects.legacy`` and converted to ``Ingress`` there, once.
"""

from __future__ import annotations

import msgspec

from kubegate.objects.meta import ObjectMeta

# --------------------------------------------------------------------------------------------------
# core/v1 Service


class ClientIPConfig(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    timeout_seconds: int | None = None


class SessionAffinityConfig(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    client_ip: ClientIPConfig | None = msgspec.field(default=None, name="clientIP")


class ServicePort(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str = ""
    protocol: str = "TCP"
    port: int
    # int, a named container port, or unset (then equal to ``port``)
    target_port: int | str | None = None
    node_port: int | None = None
    app_protocol: str | None = None


class ServiceSpec(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    type: str = "ClusterIP"
    selector: dict[str, str] | None = None
    ports: tuple[ServicePort, ...] = ()
    cluster_ip: str = msgspec.field(default="", name="clusterIP")
    cluster_ips: tuple[str, ...] = msgspec.field(default=(), name="clusterIPs")
    external_ips: tuple[str, ...] = msgspec.field(default=(), name="externalIPs")
    external_name: str = ""
    session_affinity: str = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    external_traffic_policy: str = ""
    internal_traffic_policy: str = ""
    load_balancer_ip: str = msgspec.field(default="", name="loadBalancerIP")
    load_balancer_class: str | None = None
    load_balancer_source_ranges: tuple[str, ...] = ()
    publish_not_ready_addresses: bool = False
    allocate_load_balancer_node_ports: bool = True
    health_check_node_port: int | None = None


class LoadBalancerIngress(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    ip: str = ""
    hostname: str = ""


class LoadBalancerStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    ingress: tuple[LoadBalancerIngress, ...] = ()


class ServiceStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    load_balancer: LoadBalancerStatus = LoadBalancerStatus()


class Service(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    api_version: str = "v1"
    kind: str = "Service"
    metadata: ObjectMeta
    spec: ServiceSpec = ServiceSpec()
    status: ServiceStatus = ServiceStatus()


# --------------------------------------------------------------------------------------------------
# core/v1 Endpoints


class ObjectReference(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    kind: str = ""
    namespace: str = ""
    name: str = ""
    uid: str = ""


class EndpointAddress(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    ip: str
    hostname: str = ""
    node_name: str | None = None
    target_ref: ObjectReference | None = None


class EndpointPort(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str = ""
    port: int
    protocol: str = "TCP"
    app_protocol: str | None = None


class EndpointSubset(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    addresses: tuple[EndpointAddress, ...] = ()
    not_ready_addresses: tuple[EndpointAddress, ...] = ()
    ports: tuple[EndpointPort, ...] = ()


class Endpoints(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    api_version: str = "v1"
    kind: str = "Endpoints"
    metadata: ObjectMeta
    subsets: tuple[EndpointSubset, ...] = ()


# --------------------------------------------------------------------------------------------------
# discovery.k8s.io/v1 EndpointSlice

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class EndpointConditions(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    # The API treats an unset ``ready`` as ready ("should be interpreted as unknown" -> consumers
    # treat nil as true).
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class SliceEndpoint(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    addresses: tuple[str, ...]
    conditions: EndpointConditions = EndpointConditions()
    hostname: str | None = None
    node_name: str | None = None
    zone: str | None = None
    target_ref: ObjectReference | None = None


class SlicePort(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str | None = None
    protocol: str | None = "TCP"
    port: int | None = None
    app_protocol: str | None = None


class EndpointSlice(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    api_version: str = "discovery.k8s.io/v1"
    kind: str = "EndpointSlice"
    metadata: ObjectMeta
    address_type: str
    endpoints: tuple[SliceEndpoint, ...] = ()
    ports: tuple[SlicePort, ...] | None = None


# --------------------------------------------------------------------------------------------------
# core/v1 Pod


class ContainerPort(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str = ""
    container_port: int
    protocol: str = "TCP"
    host_port: int | None = None


class Container(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    image: str = ""
    ports: tuple[ContainerPort, ...] = ()


class PodSpec(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    containers: tuple[Container, ...] = ()
    node_name: str = ""
    host_network: bool = False


class PodCondition(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    type: str
    status: str


class PodIP(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    ip: str


class PodStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    phase: str = ""
    pod_ip: str = msgspec.field(default="", name="podIP")
    pod_ips: tuple[PodIP, ...] = msgspec.field(default=(), name="podIPs")
    host_ip: str = msgspec.field(default="", name="hostIP")
    conditions: tuple[PodCondition, ...] = ()


class Pod(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    api_version: str = "v1"
    kind: str = "Pod"
    metadata: ObjectMeta
    spec: PodSpec = PodSpec()
    status: PodStatus = PodStatus()


# --------------------------------------------------------------------------------------------------
# networking.k8s.io/v1 Ingress (the legacy versions convert to this in objects.legacy)

PATH_TYPES = ("Exact", "Prefix", "ImplementationSpecific")


class ServiceBackendPort(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str = ""
    number: int = 0


class IngressServiceBackend(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    name: str
    port: ServiceBackendPort = ServiceBackendPort()


class TypedLocalObjectReference(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    api_group: str | None = None
    kind: str
    name: str


class IngressBackend(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    service: IngressServiceBackend | None = None
    resource: TypedLocalObjectReference | None = None


class HTTPIngressPath(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    path: str = ""
    path_type: str | None = None
    backend: IngressBackend


class HTTPIngressRuleValue(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    paths: tuple[HTTPIngressPath, ...] = ()


class IngressRule(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    host: str = ""
    http: HTTPIngressRuleValue | None = None


class IngressTLS(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    hosts: tuple[str, ...] = ()
    secret_name: str = ""


class IngressSpec(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    ingress_class_name: str | None = None
    default_backend: IngressBackend | None = None
    rules: tuple[IngressRule, ...] = ()
    tls: tuple[IngressTLS, ...] = ()


class IngressLoadBalancerIngress(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    ip: str = ""
    hostname: str = ""


class IngressLoadBalancerStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    ingress: tuple[IngressLoadBalancerIngress, ...] = ()


class IngressStatus(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    load_balancer: IngressLoadBalancerStatus = IngressLoadBalancerStatus()


class Ingress(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    api_version: str = "networking.k8s.io/v1"
    kind: str = "Ingress"
    metadata: ObjectMeta
    spec: IngressSpec = IngressSpec()
    status: IngressStatus = IngressStatus()


# --------------------------------------------------------------------------------------------------
# networking.k8s.io/v1 IngressClass

DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"


class IngressClassSpec(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    controller: str = ""


class IngressClass(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    api_version: str = "networking.k8s.io/v1"
    kind: str = "IngressClass"
    metadata: ObjectMeta
    spec: IngressClassSpec = IngressClassSpec()

    @property
    def is_default(self) -> bool:
        return self.metadata.annotations.get(DEFAULT_CLASS_ANNOTATION) == "true"


# --------------------------------------------------------------------------------------------------
# core/v1 Secret

TLS_SECRET_TYPE = "kubernetes.io/tls"


class Secret(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    api_version: str = "v1"
    kind: str = "Secret"
    metadata: ObjectMeta
    type: str = "Opaque"
    # base64 as in the API; stringData is merged into data by the decoder, as the API server does on write
    data: dict[str, str] = {}
    string_data: dict[str, str] = {}


KubeObject = Service | Endpoints | EndpointSlice | Pod | Ingress | IngressClass | Secret
