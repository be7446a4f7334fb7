"""One case per API validation rule: the valid value passes, the invalid one names the field and why."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kubegate.objects.decode import check_object
from kubegate.objects.validate import host_name, path_problem, port_name
from tests.unit.manifests import (
    DELETE,
    endpoint_slice,
    endpoints,
    ingress,
    ingress_class,
    node_port_service,
    pod,
    secret,
    service,
    with_field,
)

Base = Callable[[], dict[str, Any]]


def ingress_with_class() -> dict[str, Any]:
    return with_field(ingress(), "spec.ingressClassName", "kubegate")


def problems(document: dict[str, Any]) -> list[tuple[str, str]]:
    _, errors = check_object(document)
    return [(e.field, e.message) for e in errors]


@pytest.mark.parametrize(
    "base", [service, node_port_service, endpoints, endpoint_slice, pod, ingress, ingress_class, secret]
)
def test_base_manifests_are_valid(base: Base) -> None:
    assert problems(base()) == []


VALID: list[tuple[Base, str, object]] = [
    (service, "metadata.name", "a-1"),
    (service, "metadata.namespace", "team-1"),
    (service, "metadata.labels", {"example.com/tier": "front_end.1", "empty": ""}),
    (service, "spec.ports[0].port", 65535),
    (service, "spec.ports[0].targetPort", 1),
    (service, "spec.ports[0].targetPort", 0),  # defaulted to port by the API server
    (service, "spec.ports[0].targetPort", "h2c-web"),
    (service, "spec.ports[0].protocol", "SCTP"),
    (service, "spec.ports[0].protocol", "UDP"),
    (service, "spec.ports", [{"port": 80}]),  # a single port needs no name
    (service, "spec.ports[1].protocol", "UDP"),
    (service, "spec.clusterIP", "None"),
    (service, "spec.clusterIP", "10.96.0.10"),
    (service, "spec.clusterIP", "fd00::10"),
    (service, "spec.sessionAffinity", "ClientIP"),
    (service, "spec.externalIPs", ["192.0.2.10", "2001:db8::1"]),
    (service, "spec.loadBalancerSourceRanges", ["10.0.0.0/8"]),
    (service, "spec.externalIPs", ["192.0.2.10"]),
    (node_port_service, "spec.type", "LoadBalancer"),
    (node_port_service, "spec.externalTrafficPolicy", "Cluster"),
    (node_port_service, "spec.ports[0].nodePort", 1),
    (node_port_service, "spec.loadBalancerIP", "192.0.2.1"),
    (endpoints, "subsets[0].addresses[0].ip", "127.0.0.1"),  # loopback accepted, unlike the API server
    (endpoints, "subsets[0].addresses[0].ip", "::1"),
    (endpoint_slice, "endpoints[0].addresses", ["127.0.0.1"]),
    (endpoint_slice, "ports[0].port", DELETE),  # nil port: all ports
    (pod, "status.podIP", "127.0.0.1"),
    (pod, "status.podIPs", [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]),
    (ingress, "spec.rules[0].host", "*.example.com"),
    (ingress, "metadata.annotations", {"kubernetes.io/ingress.class": "kubegate"}),  # without the field
    (ingress, "spec.rules[0].host", DELETE),
    (ingress, "spec.rules[0].http", DELETE),
    (ingress, "spec.rules[0].http.paths[0].pathType", "Exact"),
    (ingress, "spec.rules[0].http.paths[0].pathType", "ImplementationSpecific"),
    (ingress, "spec.rules[0].http.paths[0].path", "/api/v1"),
    (ingress, "spec.rules[0].http.paths[0].backend", {"resource": {"kind": "Bucket", "name": "static"}}),
    (ingress, "spec.rules[0].http.paths[0].backend.service.port", {"name": "http"}),
    (ingress, "spec.rules", DELETE),  # with a defaultBackend below
    (secret, "type", "Opaque"),
    (secret, "stringData", {"tls.key": "plain text"}),
]


@pytest.mark.parametrize(("base", "path", "value"), VALID)
def test_valid_values_pass(base: Base, path: str, value: object) -> None:
    document = with_field(base(), path, value)
    if path == "spec.rules":
        document["spec"]["defaultBackend"] = {"service": {"name": "web", "port": {"number": 80}}}
    assert problems(document) == []


INVALID: list[tuple[Base, str, object, str, str]] = [
    # metadata
    (service, "metadata.name", DELETE, "metadata.name", "required"),
    (service, "metadata.name", "1web", "metadata.name", "DNS-1035 label"),
    (service, "metadata.name", "web.shop", "metadata.name", "DNS-1035 label"),
    (ingress, "metadata.name", "Web", "metadata.name", "DNS-1123 subdomain"),
    (ingress, "metadata.name", "a" * 254, "metadata.name", "longer than 253"),
    (pod, "metadata.namespace", "team.one", "metadata.namespace", "DNS-1123 label"),
    (service, "metadata.labels", {"bad key": "x"}, "metadata.labels[bad key]", "not a valid key"),
    (service, "metadata.labels", {"Example.com/x": "y"}, "metadata.labels[Example.com/x]", "prefix"),
    (service, "metadata.labels", {"app": "-web"}, "metadata.labels[app]", "not a valid label value"),
    (service, "metadata.labels", {"app": "x" * 64}, "metadata.labels[app]", "longer than 63"),
    (service, "metadata.annotations", {"/x": "y"}, "metadata.annotations[/x]", "prefix"),
    # Service ports
    (service, "spec.ports[0].port", 0, "spec.ports[0].port", "between 1 and 65535"),
    (service, "spec.ports[0].port", 65536, "spec.ports[0].port", "between 1 and 65535"),
    (service, "spec.ports[0].targetPort", 70000, "spec.ports[0].targetPort", "between 1 and 65535"),
    (service, "spec.ports[0].targetPort", "8080", "spec.ports[0].targetPort", "write 8080 without quotes"),
    (
        service,
        "spec.ports[0].targetPort",
        "very-long-port-name",
        "spec.ports[0].targetPort",
        "longer than 15",
    ),
    (service, "spec.ports[0].targetPort", "Http", "spec.ports[0].targetPort", "not a valid port name"),
    (service, "spec.ports[0].targetPort", "h--2", "spec.ports[0].targetPort", "next to another"),
    (service, "spec.ports[0].protocol", "HTTP", "spec.ports[0].protocol", "TCP, UDP, SCTP"),
    (service, "spec.ports[0].name", DELETE, "spec.ports[0].name", "more than one port"),
    (service, "spec.ports[1].name", "http", "spec.ports[1].name", "duplicate port name 'http'"),
    (service, "spec.ports[0].name", "HTTP", "spec.ports[0].name", "DNS-1123 label"),
    (service, "spec.ports[1].port", 80, "spec.ports[1]", "duplicate port 80/TCP"),
    (service, "spec.ports", [], "spec.ports", "at least one port"),
    (service, "spec.ports[0].nodePort", 30080, "spec.ports[0].nodePort", "not ClusterIP"),
    (node_port_service, "spec.ports[0].nodePort", 70000, "spec.ports[0].nodePort", "between 1 and 65535"),
    (node_port_service, "spec.ports[1].nodePort", 30080, "spec.ports[1].nodePort", "duplicate nodePort"),
    # Service type and addresses
    (service, "spec.type", "Ingress", "spec.type", "ClusterIP, NodePort, LoadBalancer, ExternalName"),
    (service, "spec.type", "ExternalName", "spec.externalName", "required"),
    (service, "spec.clusterIP", "10.96.0.300", "spec.clusterIP", "'None' (headless) or an IP address"),
    (node_port_service, "spec.clusterIP", "None", "spec.clusterIP", "only allowed for type ClusterIP"),
    (service, "spec.loadBalancerIP", "lb.example.com", "spec.loadBalancerIP", "not a valid IP"),
    (service, "spec.externalIPs", ["192.0.2.1", "nope"], "spec.externalIPs[1]", "not a valid IP"),
    (service, "spec.externalIPs", ["0.0.0.0"], "spec.externalIPs[0]", "unspecified"),
    (service, "spec.loadBalancerSourceRanges", ["10.0.0.0/33"], "spec.loadBalancerSourceRanges[0]", "CIDR"),
    (service, "spec.loadBalancerClass", "example.com/lb", "spec.loadBalancerClass", "type LoadBalancer"),
    (service, "spec.selector", {"app": "a b"}, "spec.selector[app]", "label value"),
    # session affinity and traffic policy
    (service, "spec.sessionAffinity", "Cookie", "spec.sessionAffinity", "None, ClientIP"),
    (
        service,
        "spec.sessionAffinityConfig",
        {"clientIP": {"timeoutSeconds": 600}},
        "spec.sessionAffinityConfig",
        "unless sessionAffinity is ClientIP",
    ),
    (service, "spec.externalTrafficPolicy", "Local", "spec.externalTrafficPolicy", "not ClusterIP"),
    (
        node_port_service,
        "spec.externalTrafficPolicy",
        "Nearest",
        "spec.externalTrafficPolicy",
        "Cluster, Local",
    ),
    (service, "spec.internalTrafficPolicy", "Zone", "spec.internalTrafficPolicy", "Cluster, Local"),
    # Endpoints, EndpointSlice
    (endpoints, "subsets[0].addresses[0].ip", "10.0.0", "subsets[0].addresses[0].ip", "not a valid IP"),
    (endpoints, "subsets[0].addresses[0].ip", "224.0.0.1", "subsets[0].addresses[0].ip", "multicast"),
    (endpoints, "subsets[0].ports[0].port", 0, "subsets[0].ports[0].port", "between 1 and 65535"),
    (endpoints, "subsets[0].ports[0].protocol", "tcp", "subsets[0].ports[0].protocol", "TCP, UDP, SCTP"),
    (endpoint_slice, "addressType", "IPv5", "addressType", "IPv4, IPv6, FQDN"),
    (
        endpoint_slice,
        "endpoints[0].addresses",
        ["fd00::1"],
        "endpoints[0].addresses[0]",
        "not an IPv4 address",
    ),
    (endpoint_slice, "endpoints[0].addresses", [], "endpoints[0].addresses", "at least one address"),
    (endpoint_slice, "ports[0].port", 65536, "ports[0].port", "between 1 and 65535"),
    # Pod
    (
        pod,
        "spec.containers[0].ports[0].containerPort",
        0,
        "spec.containers[0].ports[0].containerPort",
        "between 1",
    ),
    (pod, "spec.containers[0].ports[0].name", "web_http", "spec.containers[0].ports[0].name", "port name"),
    (pod, "status.podIP", "10.0.0.256", "status.podIP", "not a valid IP"),
    (pod, "status.podIPs", [{"ip": "x"}], "status.podIPs[0].ip", "not a valid IP"),
    # Ingress
    (
        ingress,
        "spec.rules[0].http.paths[0].pathType",
        DELETE,
        "spec.rules[0].http.paths[0].pathType",
        "required in networking.k8s.io/v1",
    ),
    (
        ingress,
        "spec.rules[0].http.paths[0].pathType",
        "Regex",
        "spec.rules[0].http.paths[0].pathType",
        "Exact, Prefix",
    ),
    (
        ingress,
        "spec.rules[0].http.paths[0].path",
        "api",
        "spec.rules[0].http.paths[0].path",
        "starting with '/'",
    ),
    (
        ingress,
        "spec.rules[0].http.paths[0].path",
        "",
        "spec.rules[0].http.paths[0].path",
        "starting with '/'",
    ),
    (ingress, "spec.rules[0].http.paths[0].path", "/a//b", "spec.rules[0].http.paths[0].path", "'//'"),
    (ingress, "spec.rules[0].http.paths[0].path", "/a/..", "spec.rules[0].http.paths[0].path", "end with"),
    (ingress, "spec.rules[0].http.paths", [], "spec.rules[0].http.paths", "at least one path"),
    (ingress, "spec.rules[0].host", "192.0.2.1", "spec.rules[0].host", "not an IP address"),
    (ingress, "spec.rules[0].host", "www.*.com", "spec.rules[0].host", "wildcard"),
    (ingress, "spec.rules[0].host", "*", "spec.rules[0].host", "wildcard"),
    (ingress, "spec.rules[0].host", "*.*.example.com", "spec.rules[0].host", "wildcard"),
    (ingress, "spec.rules[0].host", "WWW.example.com", "spec.rules[0].host", "DNS-1123 subdomain"),
    (ingress, "spec.tls[0].hosts[0]", "foo*.example.com", "spec.tls[0].hosts[0]", "wildcard"),
    (ingress, "spec.tls[0].secretName", "Web_TLS", "spec.tls[0].secretName", "DNS-1123 subdomain"),
    (ingress, "spec.rules", [], "spec", "rules or a defaultBackend"),
    (
        ingress,
        "spec.rules[0].http.paths[0].backend.resource",
        {"kind": "Bucket", "name": "b"},
        "spec.rules[0].http.paths[0].backend",
        "not both",
    ),
    (
        ingress,
        "spec.rules[0].http.paths[0].backend",
        {},
        "spec.rules[0].http.paths[0].backend",
        "set service or resource",
    ),
    (
        ingress,
        "spec.rules[0].http.paths[0].backend.service.port",
        {"name": "http", "number": 80},
        "spec.rules[0].http.paths[0].backend.service.port",
        "not both",
    ),
    (
        ingress,
        "spec.rules[0].http.paths[0].backend.service.port",
        {},
        "spec.rules[0].http.paths[0].backend.service.port",
        "set name or number",
    ),
    (
        ingress,
        "spec.rules[0].http.paths[0].backend.service.port.number",
        65536,
        "spec.rules[0].http.paths[0].backend.service.port.number",
        "between 1 and 65535",
    ),
    (
        ingress,
        "spec.rules[0].http.paths[0].backend.service.name",
        "Web",
        "spec.rules[0].http.paths[0].backend.service.name",
        "DNS-1035",
    ),
    (ingress, "spec.ingressClassName", "Kube_Gate", "spec.ingressClassName", "DNS-1123 subdomain"),
    (
        ingress_with_class,
        "metadata.annotations",
        {"kubernetes.io/ingress.class": "kubegate"},
        "metadata.annotations[kubernetes.io/ingress.class]",
        "not be set when spec.ingressClassName is set",
    ),
    # IngressClass, Secret
    (ingress_class, "spec.controller", DELETE, "spec.controller", "required"),
    (ingress_class, "spec.controller", "Not A Domain/x", "spec.controller", "must start with a domain"),
    (secret, "data.tls.key", DELETE, "data[tls.key]", "required in a Secret of type kubernetes.io/tls"),
    (secret, "data.tls.crt", "not base64!", "data[tls.crt]", "not valid base64"),
    (secret, "data", {"tls.crt": "", "tls.key": "", "bad/key": ""}, "data[bad/key]", "not a valid key"),
]


@pytest.mark.parametrize(("base", "path", "value", "field", "message"), INVALID)
def test_invalid_values_name_field_and_reason(
    base: Base, path: str, value: object, field: str, message: str
) -> None:
    if path.startswith("data.tls."):  # "tls.key" is one key, not a path
        document = base()
        key = path.removeprefix("data.")
        if value is DELETE:
            del document["data"][key]
        else:
            document["data"][key] = value
    else:
        document = with_field(base(), path, value)
    found = problems(document)
    assert any(f == field and message in m for f, m in found), found


def test_all_problems_of_one_object_are_reported() -> None:
    document = with_field(service(), "spec.ports[0].port", 0)
    document = with_field(document, "spec.ports[1].protocol", "HTTP")
    document = with_field(document, "metadata.name", "Web")
    fields = [f for f, _ in problems(document)]
    assert fields == ["metadata.name", "spec.ports[0].port", "spec.ports[1].protocol"]


def test_external_name_service_needs_no_ports_and_a_dns_name() -> None:
    document = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "db"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com."},
    }
    assert problems(document) == []
    bad = with_field(document, "spec.externalName", "db_host")
    assert problems(bad)[0][0] == "spec.externalName"


def test_session_affinity_timeout_bounds() -> None:
    document = with_field(service(), "spec.sessionAffinity", "ClientIP")
    for timeout, ok in ((1, True), (86400, True), (0, False), (86401, False)):
        with_timeout = with_field(
            document, "spec.sessionAffinityConfig", {"clientIP": {"timeoutSeconds": timeout}}
        )
        found = problems(with_timeout)
        assert (found == []) == ok, (timeout, found)
        if not ok:
            assert found[0][0] == "spec.sessionAffinityConfig.clientIP.timeoutSeconds"


def test_fqdn_endpoint_slice_addresses_are_dns_names() -> None:
    document = with_field(endpoint_slice(), "addressType", "FQDN")
    document = with_field(document, "endpoints[0].addresses", ["db.example.com"])
    assert problems(document) == []
    assert (
        problems(with_field(document, "endpoints[0].addresses", ["DB!"]))[0][0] == "endpoints[0].addresses[0]"
    )


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("foo.com", True),
        ("*.foo.com", True),
        ("a-b.c", True),
        ("*.com", True),
        ("::1", False),
        ("foo.*", False),
        ("", False),
    ],
)
def test_host_rules(host: str, ok: bool) -> None:
    assert (host_name(host) is None) == ok


@pytest.mark.parametrize(
    ("path", "path_type", "ok"),
    [
        ("/", "Prefix", True),
        ("/a/b/", "Exact", True),
        ("", "ImplementationSpecific", True),
        ("/a/./b", "Prefix", False),
        ("/a%2Fb", "Exact", False),
        ("x", "ImplementationSpecific", False),
        ("/a//b", "ImplementationSpecific", True),
    ],
)
def test_path_rules(path: str, path_type: str, ok: bool) -> None:
    assert (path_problem(path, path_type) is None) == ok


@pytest.mark.parametrize(
    ("name", "ok"), [("http", True), ("h2", True), ("a" * 15, True), ("80", False), ("-http", False)]
)
def test_port_name_rules(name: str, ok: bool) -> None:
    assert (port_name(name) is None) == ok


def test_external_traffic_policy_allowed_with_external_ips() -> None:
    # the API server calls a ClusterIP Service with externalIPs externally accessible
    document = with_field(service(), "spec.externalTrafficPolicy", "Local")
    assert [f for f, _ in problems(document)] == ["spec.externalTrafficPolicy"]
    assert problems(with_field(document, "spec.externalIPs", ["192.0.2.10"])) == []
