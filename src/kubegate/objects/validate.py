"""The API server's validation rules that matter for routing, applied to decoded objects.

``validate(obj)`` returns every problem of one object as (field path, message), field paths in the API's
JSON names (``spec.ports[1].targetPort``). Rules follow the Kubernetes API reference and the API server's
validation, with one deliberate difference: endpoint addresses on loopback are accepted, because manifests
for local development point at 127.0.0.1. The configured NodePort range is checked by allocation, not here.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from kubegate.objects.kinds import (
    DEFAULT_CLASS_ANNOTATION,
    LEGACY_CLASS_ANNOTATION,
    PATH_TYPES,
    TLS_SECRET_TYPE,
    Endpoints,
    EndpointSlice,
    Ingress,
    IngressBackend,
    IngressClass,
    KubeObject,
    Pod,
    Secret,
    Service,
)


class FieldError(NamedTuple):
    field: str
    message: str


# --------------------------------------------------------------------------------------------------
# name syntax (k8s.io/apimachinery/pkg/util/validation)

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def dns1123_label(value: str) -> str | None:
    """None if valid, else why not."""
    if len(value) > 63:
        return f"{value!r} is longer than 63 characters"
    if not _DNS1123_LABEL.fullmatch(value):
        return (
            f"{value!r} is not a valid DNS-1123 label: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def dns1035_label(value: str) -> str | None:
    if len(value) > 63:
        return f"{value!r} is longer than 63 characters"
    if not _DNS1035_LABEL.fullmatch(value):
        return (
            f"{value!r} is not a valid DNS-1035 label: use lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit"
        )
    return None


def dns1123_subdomain(value: str) -> str | None:
    if len(value) > 253:
        return f"{value!r} is longer than 253 characters"
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        return (
            f"{value!r} is not a valid DNS-1123 subdomain: use lowercase letters, digits, '-' and '.', "
            "each dot-separated part starting and ending with a letter or digit"
        )
    return None


def qualified_name(value: str) -> str | None:
    """Label and annotation keys: an optional DNS subdomain prefix and '/', then a name of <= 63."""
    prefix, slash, name = value.rpartition("/")
    if slash:
        if not prefix:
            return f"{value!r}: the prefix before '/' must not be empty"
        problem = dns1123_subdomain(prefix)
        if problem:
            return f"prefix of {value!r}: {problem}"
    if not name:
        return f"{value!r}: the name part must not be empty"
    if len(name) > 63:
        return f"{value!r}: the name part is longer than 63 characters"
    if not _QUALIFIED_NAME.fullmatch(name):
        return (
            f"{value!r} is not a valid key: use letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit (optionally prefixed by a DNS subdomain and '/')"
        )
    return None


def label_value(value: str) -> str | None:
    if len(value) > 63:
        return f"{value!r} is longer than 63 characters"
    if value and not _QUALIFIED_NAME.fullmatch(value):
        return (
            f"{value!r} is not a valid label value: use letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def port_name(value: str) -> str | None:
    """IANA_SVC_NAME: what a named targetPort or containerPort must be."""
    if len(value) > 15:
        return f"{value!r} is longer than 15 characters"
    if not _IANA_SVC_NAME.fullmatch(value):
        return (
            f"{value!r} is not a valid port name: use lowercase letters, digits and '-' (not at either end)"
        )
    if "--" in value:
        return f"{value!r} is not a valid port name: '-' must not be next to another '-'"
    if not any(c.isalpha() for c in value):
        hint = f" (for the number, write {value} without quotes)" if value.isdigit() else ""
        return f"{value!r} is not a valid port name: it must contain at least one letter{hint}"
    return None


def port_number(value: int) -> str | None:
    if not 1 <= value <= 65535:
        return f"{value} is not a valid port: must be between 1 and 65535"
    return None


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def ip_address(value: str) -> str | None:
    if _ip(value) is None:
        return f"{value!r} is not a valid IP address"
    return None


def endpoint_ip(value: str) -> str | None:
    """An address traffic can be sent to. Loopback is accepted (unlike the API server) for local use."""
    address = _ip(value)
    if address is None:
        return f"{value!r} is not a valid IP address"
    if address.is_unspecified:
        return f"{value!r} is the unspecified address, which no traffic can be sent to"
    if address.is_multicast:
        return f"{value!r} is a multicast address"
    if address.is_link_local:
        return f"{value!r} is a link-local address, which the API server does not accept for endpoints"
    return None


def host_name(value: str) -> str | None:
    """An Ingress host: a DNS-1123 subdomain, not an IP, '*' only as the whole first label."""
    if _ip(value) is not None:
        return f"{value!r} must be a DNS name, not an IP address"
    if "*" in value:
        if not value.startswith("*.") or "*" in value[2:]:
            return f"{value!r}: a wildcard is only allowed as the whole first label, as in '*.example.com'"
        problem = dns1123_subdomain(value[2:])
        return f"wildcard host {value!r}: {problem}" if problem else None
    return dns1123_subdomain(value)


_PROTOCOLS = ("TCP", "UDP", "SCTP")


def _one_of(value: str, allowed: Iterable[str]) -> str | None:
    choices = tuple(allowed)
    if value not in choices:
        return f"{value!r} is not supported: must be one of " + ", ".join(choices)
    return None


# --------------------------------------------------------------------------------------------------


class _Errors:
    """Collects (field, message) pairs; ``check`` adds a message when a checker returns one."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, field: str, message: str) -> None:
        self.items.append(FieldError(field, message))

    def check(self, field: str, problem: str | None) -> None:
        if problem is not None:
            self.add(field, problem)


def _metadata(errors: _Errors, obj: KubeObject, name_rule: str = "subdomain") -> None:
    meta = obj.metadata
    if not meta.name:
        errors.add("metadata.name", "required")
    elif name_rule == "dns1035":
        errors.check("metadata.name", dns1035_label(meta.name))
    else:
        errors.check("metadata.name", dns1123_subdomain(meta.name))
    if not isinstance(obj, IngressClass):
        errors.check("metadata.namespace", dns1123_label(meta.namespace))
    _labels(errors, "metadata.labels", meta.labels)
    for key in meta.annotations:
        errors.check(f"metadata.annotations[{key}]", qualified_name(key))


def _labels(errors: _Errors, field: str, labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        errors.check(f"{field}[{key}]", qualified_name(key))
        errors.check(f"{field}[{key}]", label_value(value))


def _protocol(errors: _Errors, field: str, protocol: str | None) -> None:
    if protocol is not None:
        errors.check(field, _one_of(protocol, _PROTOCOLS))


# --------------------------------------------------------------------------------------------------
# Service

_SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


def _service(errors: _Errors, service: Service) -> None:
    _metadata(errors, service, "dns1035")
    spec = service.spec
    errors.check("spec.type", _one_of(spec.type, _SERVICE_TYPES))
    headless = spec.cluster_ip == "None"
    external_name = spec.type == "ExternalName"
    exposed = spec.type in ("NodePort", "LoadBalancer")

    if external_name:
        if not spec.external_name:
            errors.add("spec.externalName", "required for a Service of type ExternalName")
        else:
            errors.check("spec.externalName", dns1123_subdomain(spec.external_name.removesuffix(".")))
        if spec.cluster_ip:
            errors.add("spec.clusterIP", "must not be set for a Service of type ExternalName")
    elif not spec.ports and not headless:
        errors.add(
            "spec.ports", "required: a Service needs at least one port (unless headless or ExternalName)"
        )

    if spec.cluster_ip and not headless and _ip(spec.cluster_ip) is None:
        errors.add("spec.clusterIP", f"{spec.cluster_ip!r} must be 'None' (headless) or an IP address")
    if headless and spec.type != "ClusterIP":
        errors.add("spec.clusterIP", f"'None' (headless) is only allowed for type ClusterIP, not {spec.type}")
    for index, cluster_ip in enumerate(spec.cluster_ips):
        if cluster_ip != "None":
            errors.check(f"spec.clusterIPs[{index}]", ip_address(cluster_ip))
    if spec.cluster_ip and spec.cluster_ips and spec.cluster_ips[0] != spec.cluster_ip:
        errors.add("spec.clusterIPs[0]", f"must be equal to spec.clusterIP {spec.cluster_ip!r}")

    _service_ports(errors, service)

    if spec.selector:
        _labels(errors, "spec.selector", spec.selector)
    errors.check("spec.sessionAffinity", _one_of(spec.session_affinity, ("None", "ClientIP")))
    config = spec.session_affinity_config
    if config is not None and config.client_ip is not None:
        timeout = config.client_ip.timeout_seconds
        if spec.session_affinity != "ClientIP":
            errors.add("spec.sessionAffinityConfig", "must not be set unless sessionAffinity is ClientIP")
        elif timeout is not None and not 1 <= timeout <= 86400:
            errors.add(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                f"{timeout} is out of range: must be between 1 and 86400 seconds",
            )
    if spec.external_traffic_policy:
        # "externally accessible", as the API server defines it: node ports, or external IPs
        accessible = exposed or (spec.type == "ClusterIP" and bool(spec.external_ips))
        if not accessible:
            errors.add(
                "spec.externalTrafficPolicy",
                f"may only be set for type NodePort or LoadBalancer or with externalIPs, not {spec.type}",
            )
        else:
            errors.check(
                "spec.externalTrafficPolicy", _one_of(spec.external_traffic_policy, ("Cluster", "Local"))
            )
    if spec.internal_traffic_policy:
        errors.check(
            "spec.internalTrafficPolicy", _one_of(spec.internal_traffic_policy, ("Cluster", "Local"))
        )
    if spec.load_balancer_ip:
        errors.check("spec.loadBalancerIP", ip_address(spec.load_balancer_ip))
    if spec.load_balancer_class is not None:
        if spec.type != "LoadBalancer":
            errors.add("spec.loadBalancerClass", f"may only be set for type LoadBalancer, not {spec.type}")
        else:
            errors.check("spec.loadBalancerClass", qualified_name(spec.load_balancer_class))
    for index, range_ in enumerate(spec.load_balancer_source_ranges):
        try:
            ipaddress.ip_network(range_.strip(), strict=False)
        except ValueError:
            errors.add(f"spec.loadBalancerSourceRanges[{index}]", f"{range_!r} is not a valid CIDR")
    for index, external_ip in enumerate(spec.external_ips):
        errors.check(f"spec.externalIPs[{index}]", endpoint_ip(external_ip))
    if spec.health_check_node_port is not None and spec.health_check_node_port != 0:
        errors.check("spec.healthCheckNodePort", port_number(spec.health_check_node_port))


def _service_ports(errors: _Errors, service: Service) -> None:
    spec = service.spec
    exposed = spec.type in ("NodePort", "LoadBalancer")
    names: dict[str, int] = {}
    port_protocols: dict[tuple[int, str], int] = {}
    node_ports: dict[tuple[int, str], int] = {}
    for index, port in enumerate(spec.ports):
        field = f"spec.ports[{index}]"
        if not port.name:
            if len(spec.ports) > 1:
                errors.add(f"{field}.name", "required when a Service has more than one port")
        else:
            errors.check(f"{field}.name", dns1123_label(port.name))
            if port.name in names:
                errors.add(
                    f"{field}.name",
                    f"duplicate port name {port.name!r} (also spec.ports[{names[port.name]}])",
                )
            names.setdefault(port.name, index)
        errors.check(f"{field}.port", port_number(port.port))
        _protocol(errors, f"{field}.protocol", port.protocol)
        key = (port.port, port.protocol)
        if key in port_protocols:
            errors.add(
                field,
                f"duplicate port {port.port}/{port.protocol} (also spec.ports[{port_protocols[key]}])",
            )
        port_protocols.setdefault(key, index)
        target = port.target_port
        if isinstance(target, int):
            if target != 0:  # 0 is defaulted to ``port`` by the API server
                errors.check(f"{field}.targetPort", port_number(target))
        elif isinstance(target, str) and target:
            errors.check(f"{field}.targetPort", port_name(target))
        if port.node_port:
            if not exposed:
                errors.add(
                    f"{field}.nodePort", f"may only be set for type NodePort or LoadBalancer, not {spec.type}"
                )
            else:
                errors.check(f"{field}.nodePort", port_number(port.node_port))
                node_key = (port.node_port, port.protocol)
                if node_key in node_ports:
                    errors.add(
                        f"{field}.nodePort",
                        f"duplicate nodePort {port.node_port}/{port.protocol} "
                        f"(also spec.ports[{node_ports[node_key]}])",
                    )
                node_ports.setdefault(node_key, index)


# --------------------------------------------------------------------------------------------------
# Endpoints, EndpointSlice, Pod


def _endpoint_port_names(errors: _Errors, field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if not name:
            if len(names) > 1:
                errors.add(f"{field}[{index}].name", "required when there is more than one port")
            continue
        errors.check(f"{field}[{index}].name", dns1123_label(name))
        if name in seen:
            errors.add(f"{field}[{index}].name", f"duplicate port name {name!r}")
        seen.add(name)


def _endpoints(errors: _Errors, endpoints: Endpoints) -> None:
    _metadata(errors, endpoints)
    for s, subset in enumerate(endpoints.subsets):
        for group, addresses in (
            ("addresses", subset.addresses),
            ("notReadyAddresses", subset.not_ready_addresses),
        ):
            for a, address in enumerate(addresses):
                errors.check(f"subsets[{s}].{group}[{a}].ip", endpoint_ip(address.ip))
        for p, port in enumerate(subset.ports):
            errors.check(f"subsets[{s}].ports[{p}].port", port_number(port.port))
            _protocol(errors, f"subsets[{s}].ports[{p}].protocol", port.protocol)
        _endpoint_port_names(errors, f"subsets[{s}].ports", [port.name for port in subset.ports])


_ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


def _slice_address(address_type: str, value: str) -> str | None:
    if address_type == "FQDN":
        return dns1123_subdomain(value)
    problem = endpoint_ip(value)
    if problem:
        return problem
    version = 4 if address_type == "IPv4" else 6
    if ipaddress.ip_address(value).version != version:
        return f"{value!r} is not an {address_type} address (the slice's addressType)"
    return None


def _endpoint_slice(errors: _Errors, slice_: EndpointSlice) -> None:
    _metadata(errors, slice_)
    type_problem = _one_of(slice_.address_type, _ADDRESS_TYPES)
    errors.check("addressType", type_problem)
    for e, endpoint in enumerate(slice_.endpoints):
        if not endpoint.addresses:
            errors.add(f"endpoints[{e}].addresses", "required: an endpoint needs at least one address")
        elif len(endpoint.addresses) > 100:
            errors.add(f"endpoints[{e}].addresses", "must have at most 100 addresses")
        if type_problem is None:
            for a, address in enumerate(endpoint.addresses):
                errors.check(f"endpoints[{e}].addresses[{a}]", _slice_address(slice_.address_type, address))
    ports = slice_.ports or ()
    for p, port in enumerate(ports):
        if port.port is not None:
            errors.check(f"ports[{p}].port", port_number(port.port))
        _protocol(errors, f"ports[{p}].protocol", port.protocol)
    _endpoint_port_names(errors, "ports", [port.name or "" for port in ports])


def _pod(errors: _Errors, pod: Pod) -> None:
    _metadata(errors, pod)
    for c, container in enumerate(pod.spec.containers):
        field = f"spec.containers[{c}]"
        if not container.name:
            errors.add(f"{field}.name", "required")
        seen: set[str] = set()
        for p, port in enumerate(container.ports):
            errors.check(f"{field}.ports[{p}].containerPort", port_number(port.container_port))
            if port.host_port:
                errors.check(f"{field}.ports[{p}].hostPort", port_number(port.host_port))
            _protocol(errors, f"{field}.ports[{p}].protocol", port.protocol)
            if port.name:
                errors.check(f"{field}.ports[{p}].name", port_name(port.name))
                if port.name in seen:
                    errors.add(f"{field}.ports[{p}].name", f"duplicate port name {port.name!r}")
                seen.add(port.name)
    status = pod.status
    if status.pod_ip:
        errors.check("status.podIP", endpoint_ip(status.pod_ip))
    for index, pod_ip in enumerate(status.pod_ips):
        errors.check(f"status.podIPs[{index}].ip", endpoint_ip(pod_ip.ip))
    if status.host_ip:
        errors.check("status.hostIP", ip_address(status.host_ip))


# --------------------------------------------------------------------------------------------------
# Ingress, IngressClass


def _backend(errors: _Errors, field: str, backend: IngressBackend) -> None:
    service, resource = backend.service, backend.resource
    if service is not None and resource is not None:
        errors.add(field, "set either service or resource, not both")
    elif service is None and resource is None:
        errors.add(field, "required: set service or resource")
    if service is not None:
        if not service.name:
            errors.add(f"{field}.service.name", "required")
        else:
            errors.check(f"{field}.service.name", dns1035_label(service.name))
        port = service.port
        if port.name and port.number:
            errors.add(f"{field}.service.port", "set either name or number, not both")
        elif port.name:
            errors.check(f"{field}.service.port.name", port_name(port.name))
        elif port.number:
            errors.check(f"{field}.service.port.number", port_number(port.number))
        else:
            errors.add(f"{field}.service.port", "required: set name or number")
    if resource is not None:
        if not resource.kind:
            errors.add(f"{field}.resource.kind", "required")
        if not resource.name:
            errors.add(f"{field}.resource.name", "required")


def path_problem(path: str, path_type: str) -> str | None:
    """The API server's rules for an Ingress path of a given pathType."""
    if path_type in ("Exact", "Prefix") and not path.startswith("/"):
        return f"{path!r} must be an absolute path starting with '/' for pathType {path_type}"
    if path and not path.startswith("/"):
        return f"{path!r} must be an absolute path starting with '/'"
    if path_type in ("Exact", "Prefix"):
        for bad in ("//", "/./", "/../", "%2f", "%2F"):
            if bad in path:
                return f"{path!r} must not contain {bad!r}"
        for bad in ("/..", "/."):
            if path.endswith(bad):
                return f"{path!r} must not end with {bad!r}"
    return None


def _ingress(errors: _Errors, ingress: Ingress) -> None:
    _metadata(errors, ingress)
    spec = ingress.spec
    if spec.ingress_class_name is not None:
        errors.check("spec.ingressClassName", dns1123_subdomain(spec.ingress_class_name))
        if LEGACY_CLASS_ANNOTATION in ingress.metadata.annotations:
            # the API server refuses both on create: which class is meant would be ambiguous
            errors.add(
                f"metadata.annotations[{LEGACY_CLASS_ANNOTATION}]",
                "must not be set when spec.ingressClassName is set",
            )
    if not spec.rules and spec.default_backend is None:
        errors.add("spec", "an Ingress needs rules or a defaultBackend")
    if spec.default_backend is not None:
        _backend(errors, "spec.defaultBackend", spec.default_backend)
    for r, rule in enumerate(spec.rules):
        field = f"spec.rules[{r}]"
        if rule.host:
            errors.check(f"{field}.host", host_name(rule.host))
        if rule.http is None:
            continue
        if not rule.http.paths:
            errors.add(f"{field}.http.paths", "required: list at least one path (or leave out http)")
        for p, path in enumerate(rule.http.paths):
            path_field = f"{field}.http.paths[{p}]"
            if path.path_type is None:
                errors.add(f"{path_field}.pathType", "required in networking.k8s.io/v1")
            else:
                type_problem = _one_of(path.path_type, PATH_TYPES)
                errors.check(f"{path_field}.pathType", type_problem)
                if type_problem is None:
                    errors.check(f"{path_field}.path", path_problem(path.path, path.path_type))
            _backend(errors, f"{path_field}.backend", path.backend)
    for t, tls in enumerate(spec.tls):
        for h, host in enumerate(tls.hosts):
            errors.check(f"spec.tls[{t}].hosts[{h}]", host_name(host))
        if tls.secret_name:
            errors.check(f"spec.tls[{t}].secretName", dns1123_subdomain(tls.secret_name))


def _ingress_class(errors: _Errors, ingress_class: IngressClass) -> None:
    _metadata(errors, ingress_class)
    controller = ingress_class.spec.controller
    if not controller:
        errors.add("spec.controller", "required, e.g. 'example.com/ingress-controller'")
    elif len(controller) > 250:
        errors.add("spec.controller", "must be at most 250 characters")
    else:
        domain = controller.partition("/")[0]
        if dns1123_subdomain(domain) is not None:
            errors.add(
                "spec.controller", f"{controller!r} must start with a domain, as in 'example.com/ingress'"
            )


# --------------------------------------------------------------------------------------------------
# Secret


def _secret(errors: _Errors, secret: Secret) -> None:
    _metadata(errors, secret)
    for key, value in secret.data.items():
        field = f"data[{key}]"
        if len(key) > 253 or not _CONFIG_KEY.fullmatch(key):
            errors.add(field, f"{key!r} is not a valid key: use letters, digits, '-', '_' and '.'")
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            errors.add(field, "is not valid base64 (use stringData for plain text)")
    if secret.type == TLS_SECRET_TYPE:
        for key in ("tls.crt", "tls.key"):
            if key not in secret.data:
                errors.add(f"data[{key}]", f"required in a Secret of type {TLS_SECRET_TYPE}")


def warnings(obj: KubeObject) -> list[FieldError]:
    """What the API server accepts but is probably not what the author meant."""
    found: list[FieldError] = []
    if isinstance(obj, IngressClass):
        value = obj.metadata.annotations.get(DEFAULT_CLASS_ANNOTATION)
        if value is not None and value not in ("true", "false"):
            found.append(
                FieldError(
                    f"metadata.annotations[{DEFAULT_CLASS_ANNOTATION}]",
                    f'{value!r} does not mark the default class: only the exact value "true" does',
                )
            )
    return found


def validate(obj: KubeObject) -> list[FieldError]:
    """Every rule this object breaks, in field order within each part; empty when valid."""
    errors = _Errors()
    if isinstance(obj, Service):
        _service(errors, obj)
    elif isinstance(obj, Endpoints):
        _endpoints(errors, obj)
    elif isinstance(obj, EndpointSlice):
        _endpoint_slice(errors, obj)
    elif isinstance(obj, Pod):
        _pod(errors, obj)
    elif isinstance(obj, Ingress):
        _ingress(errors, obj)
    elif isinstance(obj, IngressClass):
        _ingress_class(errors, obj)
    else:
        _secret(errors, obj)
    return errors.items
