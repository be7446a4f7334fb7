"""Options.addresses_from_spec: from the API server, ClusterIPs and nodePorts are followed, not allocated."""

from __future__ import annotations

from typing import Any

from kubegate.objects.decode import decode_object
from kubegate.objects.kinds import Service
from kubegate.translate.allocation import allocate
from kubegate.translate.context import Allocations, Options

FROM_API = Options(addresses_from_spec=True, service_cidr="10.96.0.0/12", node_port_range=(30000, 30010))


def service(name: str, **spec: Any) -> Service:
    obj = decode_object(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80}], **spec},
        }
    )
    assert isinstance(obj, Service)
    return obj


def test_values_outside_our_ranges_are_taken_as_the_api_server_gave_them() -> None:
    services = {
        ("default", "web"): service(
            "web", type="NodePort", clusterIP="10.43.0.10", ports=[{"port": 80, "nodePort": 31999}]
        ),
    }
    allocations, diagnostics = allocate(services, Allocations(), FROM_API)
    assert diagnostics == []
    assert allocations.cluster_ips == {"default/web": "10.43.0.10"}
    assert allocations.node_ports == {"default/web:80/TCP": 31999}


def test_nothing_is_handed_out_that_the_spec_does_not_have() -> None:
    services = {
        ("default", "pending"): service("pending", type="NodePort"),
        ("default", "headless"): service("headless", clusterIP="None"),
        ("default", "alias"): service("alias", type="ExternalName", externalName="db.example.com", ports=[]),
    }
    allocations, diagnostics = allocate(services, Allocations(), FROM_API)
    assert diagnostics == []
    assert allocations.cluster_ips == {} and allocations.node_ports == {}


def test_the_same_values_held_by_two_services_are_not_second_guessed() -> None:
    # the API server keeps them unique; whatever it says is what the kernel rules must match
    services = {
        ("default", "a"): service("a", clusterIP="10.96.0.20"),
        ("default", "b"): service("b", clusterIP="10.96.0.21"),
    }
    previous = Allocations(cluster_ips={"default/a": "10.96.0.21", "default/b": "10.96.0.20"})
    allocations, _ = allocate(services, previous, FROM_API)
    assert allocations.cluster_ips == {"default/a": "10.96.0.20", "default/b": "10.96.0.21"}


def test_load_balancer_ips_are_still_ours_to_allocate() -> None:
    services = {("default", "lb"): service("lb", type="LoadBalancer", clusterIP="10.96.0.30")}
    allocations, diagnostics = allocate(services, Allocations(), FROM_API)
    assert diagnostics == []
    assert allocations.load_balancer_ips == {"default/lb": "127.0.100.1"}


def test_without_the_option_our_allocator_decides() -> None:
    services = {("default", "web"): service("web", clusterIP="10.43.0.10")}
    allocations, diagnostics = allocate(services, Allocations(), Options())
    assert allocations.cluster_ips == {}
    assert [d.field for d in diagnostics] == ["spec.clusterIP"]
