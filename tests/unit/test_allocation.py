"""allocate(): ClusterIPs, nodePorts and LoadBalancer IPs, with rules from the Kubernetes API server and
MetalLB, and properties (no collisions, in range, order-independent, stable) checked with hypothesis."""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Mapping, Sequence

from hypothesis import event, given, settings
from hypothesis import strategies as st

from kubegate.objects.kinds import (
    LoadBalancerIngress,
    LoadBalancerStatus,
    Service,
    ServicePort,
    ServiceSpec,
    ServiceStatus,
)
from kubegate.objects.meta import ObjectKey, ObjectMeta
from kubegate.translate.allocation import (
    LOAD_BALANCER_IPS_ANNOTATION,
    METALLB_LOAD_BALANCER_IPS_ANNOTATION,
    allocate,
    parse_address_range,
)
from kubegate.translate.context import EMBEDDED_POOL, Allocations, Diagnostic, Options, Pool

Services = dict[tuple[str, str], Service]


def service(
    name: str,
    namespace: str = "default",
    *,
    type: str = "ClusterIP",
    ports: Sequence[ServicePort] = (ServicePort(port=80),),
    created: str = "",
    cluster_ip: str = "",
    load_balancer_ip: str = "",
    load_balancer_class: str | None = None,
    annotations: Mapping[str, str] | None = None,
    allocate_node_ports: bool = True,
    status_ip: str = "",
) -> Service:
    return Service(
        metadata=ObjectMeta(
            name=name, namespace=namespace, creation_timestamp=created, annotations=dict(annotations or {})
        ),
        spec=ServiceSpec(
            type=type,
            ports=tuple(ports),
            cluster_ip=cluster_ip,
            load_balancer_ip=load_balancer_ip,
            load_balancer_class=load_balancer_class,
            allocate_load_balancer_node_ports=allocate_node_ports,
        ),
        status=ServiceStatus(
            load_balancer=LoadBalancerStatus(
                ingress=(LoadBalancerIngress(ip=status_ip),) if status_ip else ()
            )
        ),
    )


def keyed(*services: Service) -> Services:
    return {(s.metadata.namespace, s.metadata.name): s for s in services}


def errors(diagnostics: list[Diagnostic]) -> list[tuple[str, str, str]]:
    return [(str(d.object), d.field, d.message) for d in diagnostics if d.severity == "error"]


OPTIONS = Options(service_cidr="10.96.0.0/24", node_port_range=(30000, 30009))


# --------------------------------------------------------------------------------------------------
# ClusterIP


def test_cluster_ips_start_after_the_address_reserved_for_the_kubernetes_service() -> None:
    result, diagnostics = allocate(
        keyed(service("a", created="1"), service("b", created="2")), Allocations(), OPTIONS
    )
    assert result.cluster_ips == {"default/a": "10.96.0.2", "default/b": "10.96.0.3"}
    assert diagnostics == []


def test_the_kubernetes_service_gets_the_first_host_address() -> None:
    services = keyed(service("kubernetes", created="2"), service("a", created="1"))
    result, _ = allocate(services, Allocations(), OPTIONS)
    assert result.cluster_ips == {"default/kubernetes": "10.96.0.1", "default/a": "10.96.0.2"}


def test_requesting_the_reserved_address_names_the_kubernetes_service() -> None:
    result, diagnostics = allocate(keyed(service("a", cluster_ip="10.96.0.1")), Allocations(), OPTIONS)
    assert result.cluster_ips == {}
    assert errors(diagnostics) == [
        (
            "Service default/a",
            "spec.clusterIP",
            "10.96.0.1 is already allocated to Service default/kubernetes (the first address of the "
            "service CIDR is reserved for it)",
        )
    ]


def test_requested_cluster_ip_is_honoured_and_skipped_by_dynamic_allocation() -> None:
    services = keyed(service("dns", cluster_ip="10.96.0.2", created="2"), service("a", created="1"))
    result, diagnostics = allocate(services, Allocations(), OPTIONS)
    assert result.cluster_ips == {"default/dns": "10.96.0.2", "default/a": "10.96.0.3"}
    assert diagnostics == []


def test_requested_cluster_ip_outside_the_cidr_network_or_broadcast_is_an_error() -> None:
    for requested in ("10.97.0.5", "10.96.0.0", "10.96.0.255", "fd00::1", "not-an-ip"):
        result, diagnostics = allocate(keyed(service("a", cluster_ip=requested)), Allocations(), OPTIONS)
        assert result.cluster_ips == {}, requested
        [(_, field, message)] = errors(diagnostics)
        assert field == "spec.clusterIP"
        assert requested in message


def test_headless_and_external_name_services_get_no_cluster_ip_and_release_their_old_one() -> None:
    previous = Allocations(cluster_ips={"default/h": "10.96.0.7", "default/x": "10.96.0.8"})
    services = keyed(service("h", cluster_ip="None"), service("x", type="ExternalName"))
    result, diagnostics = allocate(services, previous, OPTIONS)
    assert result.cluster_ips == {}
    assert diagnostics == []


def test_previous_cluster_ips_are_kept_and_deleted_services_release_theirs() -> None:
    previous = Allocations(cluster_ips={"default/a": "10.96.0.9", "default/gone": "10.96.0.2"})
    result, _ = allocate(keyed(service("a"), service("b")), previous, OPTIONS)
    assert result.cluster_ips == {"default/a": "10.96.0.9", "default/b": "10.96.0.2"}


def test_a_request_for_a_taken_cluster_ip_fails_on_the_requester_only() -> None:
    previous = Allocations(cluster_ips={"default/web": "10.96.0.5"})
    services = keyed(service("web", created="2"), service("new", cluster_ip="10.96.0.5", created="1"))
    result, diagnostics = allocate(services, previous, OPTIONS)
    assert result.cluster_ips == {"default/web": "10.96.0.5"}
    assert errors(diagnostics) == [
        ("Service default/new", "spec.clusterIP", "10.96.0.5 is already allocated to Service default/web")
    ]


def test_when_nobody_held_a_contested_ip_the_oldest_service_gets_it() -> None:
    services = keyed(
        service("young", cluster_ip="10.96.0.5", created="2024-02-01T00:00:00Z"),
        service("old", cluster_ip="10.96.0.5", created="2024-01-01T00:00:00Z"),
    )
    result, diagnostics = allocate(services, Allocations(), OPTIONS)
    assert result.cluster_ips == {"default/old": "10.96.0.5"}
    assert errors(diagnostics) == [
        ("Service default/young", "spec.clusterIP", "10.96.0.5 is already allocated to Service default/old")
    ]


def test_a_damaged_state_giving_two_services_one_ip_is_repaired_silently() -> None:
    previous = Allocations(cluster_ips={"default/old": "10.96.0.5", "default/new": "10.96.0.5"})
    services = keyed(service("new", created="2"), service("old", created="1"))
    result, diagnostics = allocate(services, previous, OPTIONS)
    assert result.cluster_ips == {"default/old": "10.96.0.5", "default/new": "10.96.0.2"}
    assert diagnostics == []


def test_cluster_ip_exhaustion_is_reported_per_service() -> None:
    options = Options(service_cidr="10.96.0.0/29")  # .2 to .6 are dynamic
    services = keyed(*(service(f"s{i}", created=f"{i}") for i in range(6)))
    result, diagnostics = allocate(services, Allocations(), options)
    assert sorted(result.cluster_ips.values()) == [f"10.96.0.{i}" for i in range(2, 7)]
    assert errors(diagnostics) == [
        ("Service default/s5", "spec.clusterIP", "no free address in the service CIDR 10.96.0.0/29")
    ]


def test_ipv6_service_cidr_uses_its_last_address() -> None:
    options = Options(service_cidr="fd00::/126")  # ::2 and ::3 are dynamic
    result, diagnostics = allocate(
        keyed(service("a", created="1"), service("b", created="2")), Allocations(), options
    )
    assert result.cluster_ips == {"default/a": "fd00::2", "default/b": "fd00::3"}
    assert diagnostics == []


def test_a_full_slash_12_is_not_materialised_and_ten_thousand_services_are_fast() -> None:
    kinds = ["ClusterIP"] * 8 + ["NodePort", "LoadBalancer"]
    services = keyed(*(service(f"s{i}", f"ns{i % 20}", type=kinds[i % 10]) for i in range(10_000)))
    options = Options(pools=(Pool(name="big", addresses=("10.200.0.0/16",)),))
    started = time.perf_counter()
    result, diagnostics = allocate(services, Allocations(), options)
    again, _ = allocate(services, result, options)
    elapsed = time.perf_counter() - started
    assert diagnostics == []
    assert len(result.cluster_ips) == 10_000 and len(result.node_ports) == 2_000
    assert again == result
    # both calls together; about 0.15 s measured on a loaded 2-core machine, so this bound catches O(n^2)
    assert elapsed < 1.0


# --------------------------------------------------------------------------------------------------
# nodePort


def test_node_ports_are_allocated_lowest_first_for_node_port_and_load_balancer_services() -> None:
    services = keyed(
        service("np", type="NodePort", created="1", ports=(ServicePort(port=80), ServicePort(port=443))),
        service("lb", type="LoadBalancer", created="2"),
        service("plain", created="3"),
    )
    result, _ = allocate(services, Allocations(), OPTIONS)
    assert result.node_ports == {
        "default/np:80/TCP": 30000,
        "default/np:443/TCP": 30001,
        "default/lb:80/TCP": 30002,
    }


def test_requested_node_port_is_honoured_and_others_are_allocated_around_it() -> None:
    services = keyed(
        service("fixed", type="NodePort", created="2", ports=(ServicePort(port=80, node_port=30000),)),
        service("auto", type="NodePort", created="1"),
    )
    result, diagnostics = allocate(services, Allocations(), OPTIONS)
    assert result.node_ports == {"default/fixed:80/TCP": 30000, "default/auto:80/TCP": 30001}
    assert diagnostics == []


def test_a_node_port_held_by_another_service_is_an_error_naming_it() -> None:
    previous = Allocations(node_ports={"default/web:80/TCP": 30080})
    options = Options(node_port_range=(30000, 32767))
    services = keyed(
        service("web", type="NodePort", created="2"),
        service("api", type="NodePort", created="1", ports=(ServicePort(port=8080, node_port=30080),)),
    )
    result, diagnostics = allocate(services, previous, options)
    assert result.node_ports == {"default/web:80/TCP": 30080}
    assert errors(diagnostics) == [
        ("Service default/api", "spec.ports[0].nodePort", "30080 is already allocated to Service default/web")
    ]


def test_node_port_outside_the_range_is_an_error() -> None:
    services = keyed(service("a", type="NodePort", ports=(ServicePort(port=80, node_port=8080),)))
    result, diagnostics = allocate(services, Allocations(), OPTIONS)
    assert result.node_ports == {}
    assert errors(diagnostics) == [
        ("Service default/a", "spec.ports[0].nodePort", "8080 is outside the nodePort range 30000-30009")
    ]


def test_tcp_and_udp_of_one_port_share_a_node_port_but_services_never_do() -> None:
    dns_ports = (ServicePort(port=53, protocol="UDP"), ServicePort(port=53, protocol="TCP"))
    services = keyed(
        service("dns", type="NodePort", created="1", ports=dns_ports),
        service("other", type="NodePort", created="2", ports=(ServicePort(port=53, protocol="UDP"),)),
    )
    result, diagnostics = allocate(services, Allocations(), OPTIONS)
    assert result.node_ports == {
        "default/dns:53/UDP": 30000,
        "default/dns:53/TCP": 30000,
        "default/other:53/UDP": 30001,
    }
    assert diagnostics == []


def test_one_service_may_not_use_a_node_port_twice_for_one_protocol() -> None:
    ports = (ServicePort(port=80, node_port=30005), ServicePort(port=81, node_port=30005))
    result, diagnostics = allocate(keyed(service("a", type="NodePort", ports=ports)), Allocations(), OPTIONS)
    assert result.node_ports == {"default/a:80/TCP": 30005}
    assert errors(diagnostics) == [
        ("Service default/a", "spec.ports[1].nodePort", "30005/TCP is already used by spec.ports[0]")
    ]


def test_node_ports_are_released_when_no_longer_needed() -> None:
    previous = Allocations(
        node_ports={"default/was-np:80/TCP": 30001, "default/np:80/TCP": 30002, "default/np:8080/TCP": 30003}
    )
    services = keyed(service("was-np"), service("np", type="NodePort"))
    result, _ = allocate(services, previous, OPTIONS)
    assert result.node_ports == {"default/np:80/TCP": 30002}


def test_load_balancer_without_node_port_allocation_keeps_only_requested_node_ports() -> None:
    ports = (ServicePort(port=80, node_port=30007), ServicePort(port=443))
    previous = Allocations(node_ports={"default/lb:443/TCP": 30001})
    services = keyed(service("lb", type="LoadBalancer", ports=ports, allocate_node_ports=False))
    result, _ = allocate(services, previous, OPTIONS)
    assert result.node_ports == {"default/lb:80/TCP": 30007}


def test_node_port_exhaustion_fails_only_the_ports_left_over() -> None:
    options = Options(node_port_range=(30000, 30001))
    services = keyed(
        service("a", type="NodePort", created="1", ports=(ServicePort(port=1), ServicePort(port=2))),
        service("b", type="NodePort", created="2"),
    )
    result, diagnostics = allocate(services, Allocations(), options)
    assert result.node_ports == {"default/a:1/TCP": 30000, "default/a:2/TCP": 30001}
    assert errors(diagnostics) == [
        ("Service default/b", "spec.ports[0].nodePort", "no free nodePort in the range 30000-30001")
    ]


# --------------------------------------------------------------------------------------------------
# LoadBalancer IP


POOLS = (
    Pool(name="team-a", addresses=("192.0.2.0/30",), namespaces=("a",)),
    Pool(name="public", addresses=("198.51.100.10-198.51.100.11",)),
    Pool(name="reserved", addresses=("203.0.113.0/24",), auto_assign=False),
)
LB_OPTIONS = Options(pools=POOLS)


def test_load_balancer_ip_comes_from_the_first_pool_that_serves_the_namespace() -> None:
    services = keyed(service("x", "a", type="LoadBalancer"), service("y", "b", type="LoadBalancer"))
    result, diagnostics = allocate(services, Allocations(), LB_OPTIONS)
    # a CIDR pool starts at its network address, as in MetalLB
    assert result.load_balancer_ips == {"a/x": "192.0.2.0", "b/y": "198.51.100.10"}
    assert diagnostics == []


def test_avoid_buggy_ips_skips_dot_zero_and_dot_255() -> None:
    options = Options(pools=(Pool(name="p", addresses=("192.0.2.255-192.0.3.1",), avoid_buggy_ips=True),))
    services = keyed(
        service("a", type="LoadBalancer", created="1"), service("b", type="LoadBalancer", created="2")
    )
    result, diagnostics = allocate(services, Allocations(), options)
    assert result.load_balancer_ips == {"default/a": "192.0.3.1"}
    assert errors(diagnostics) == [("Service default/b", "spec.type", "no free address in pools p")]
    assert EMBEDDED_POOL.avoid_buggy_ips
    result, _ = allocate(keyed(service("a", type="LoadBalancer")), Allocations(), Options())
    assert result.load_balancer_ips == {"default/a": "127.0.100.1"}


def test_explicit_load_balancer_ip_may_come_from_a_pool_without_auto_assign() -> None:
    services = keyed(
        service("spec", type="LoadBalancer", load_balancer_ip="203.0.113.7"),
        service("kg", type="LoadBalancer", annotations={LOAD_BALANCER_IPS_ANNOTATION: "203.0.113.8"}),
        service(
            "mlb", type="LoadBalancer", annotations={METALLB_LOAD_BALANCER_IPS_ANNOTATION: " 203.0.113.9 "}
        ),
    )
    result, diagnostics = allocate(services, Allocations(), LB_OPTIONS)
    assert result.load_balancer_ips == {
        "default/spec": "203.0.113.7",
        "default/kg": "203.0.113.8",
        "default/mlb": "203.0.113.9",
    }
    assert diagnostics == []


def test_explicit_load_balancer_ip_outside_the_allowed_pools_is_an_error() -> None:
    # 192.0.2.1 is in team-a, which does not serve namespace b
    services = keyed(service("y", "b", type="LoadBalancer", load_balancer_ip="192.0.2.1"))
    result, diagnostics = allocate(services, Allocations(), LB_OPTIONS)
    assert result.load_balancer_ips == {}
    assert errors(diagnostics) == [
        (
            "Service b/y",
            "spec.loadBalancerIP",
            "192.0.2.1 is not in an address pool this Service may use (pools: public, reserved)",
        )
    ]


def test_a_taken_load_balancer_ip_is_an_error_naming_the_holder() -> None:
    previous = Allocations(load_balancer_ips={"b/first": "198.51.100.10"})
    services = keyed(
        service("first", "b", type="LoadBalancer", created="3"),
        service("second", "b", type="LoadBalancer", created="1", load_balancer_ip="198.51.100.10"),
    )
    result, diagnostics = allocate(services, previous, LB_OPTIONS)
    assert result.load_balancer_ips == {"b/first": "198.51.100.10"}
    assert errors(diagnostics) == [
        ("Service b/second", "spec.loadBalancerIP", "198.51.100.10 is already allocated to Service b/first")
    ]


def test_without_previous_state_the_address_in_the_status_is_kept() -> None:
    services = keyed(
        service("a", "b", type="LoadBalancer", created="1"),
        service("z", "b", type="LoadBalancer", created="2", status_ip="198.51.100.10"),
    )
    result, _ = allocate(services, Allocations(), LB_OPTIONS)
    assert result.load_balancer_ips == {"b/z": "198.51.100.10", "b/a": "198.51.100.11"}
    # the state file wins over the status
    previous = Allocations(load_balancer_ips={"b/z": "198.51.100.11"})
    result, _ = allocate(services, previous, LB_OPTIONS)
    assert result.load_balancer_ips == {"b/z": "198.51.100.11", "b/a": "198.51.100.10"}


def test_a_named_pool_is_used_even_without_auto_assign() -> None:
    services = keyed(
        service(
            "a", "b", type="LoadBalancer", created="1", annotations={"kubegate.io/address-pool": "reserved"}
        ),
        service(
            "m", "b", type="LoadBalancer", created="2", annotations={"metallb.io/address-pool": "reserved"}
        ),
    )
    result, diagnostics = allocate(services, Allocations(), LB_OPTIONS)
    assert result.load_balancer_ips == {"b/a": "203.0.113.0", "b/m": "203.0.113.1"}
    assert diagnostics == []


def test_a_named_pool_that_does_not_serve_the_service_is_an_error() -> None:
    annotations = {"metallb.universe.tf/address-pool": "team-a"}
    previous = Allocations(load_balancer_ips={"b/y": "198.51.100.10"})
    services = keyed(service("y", "b", type="LoadBalancer", annotations=annotations))
    result, diagnostics = allocate(services, previous, LB_OPTIONS)
    assert result.load_balancer_ips == {}
    assert errors(diagnostics) == [
        (
            "Service b/y",
            "metadata.annotations[metallb.universe.tf/address-pool]",
            "no address pool named team-a serves namespace b and loadBalancerClass kubegate.io/load-balancer",
        )
    ]


def test_several_annotated_addresses_use_the_first_with_a_warning() -> None:
    annotations = {LOAD_BALANCER_IPS_ANNOTATION: "198.51.100.11,2001:db8::1"}
    result, diagnostics = allocate(
        keyed(service("a", type="LoadBalancer", annotations=annotations)), Allocations(), LB_OPTIONS
    )
    assert result.load_balancer_ips == {"default/a": "198.51.100.11"}
    assert [(d.severity, d.message) for d in diagnostics] == [
        ("warning", "kubegate assigns one address per Service; using 198.51.100.11, ignoring 2001:db8::1")
    ]


def test_exhausted_pools_fail_only_the_services_left_over() -> None:
    services = keyed(*(service(f"s{i}", "b", type="LoadBalancer", created=f"{i}") for i in range(3)))
    result, diagnostics = allocate(services, Allocations(), LB_OPTIONS)
    assert result.load_balancer_ips == {"b/s0": "198.51.100.10", "b/s1": "198.51.100.11"}
    assert errors(diagnostics) == [("Service b/s2", "spec.type", "no free address in pools public")]
    services = keyed(*(service(f"s{i}", "a", type="LoadBalancer", created=f"{i}") for i in range(7)))
    _, diagnostics = allocate(services, Allocations(), LB_OPTIONS)
    assert errors(diagnostics) == [("Service a/s6", "spec.type", "no free address in pools team-a, public")]


def test_services_of_another_load_balancer_class_are_left_alone() -> None:
    previous = Allocations(load_balancer_ips={"default/theirs": "198.51.100.10"})
    services = keyed(
        service("theirs", type="LoadBalancer", load_balancer_class="example.com/other"),
        service("ours", type="LoadBalancer", load_balancer_class=LB_OPTIONS.load_balancer_class),
    )
    result, diagnostics = allocate(services, previous, LB_OPTIONS)
    assert result.load_balancer_ips == {"default/ours": "198.51.100.10"}
    assert diagnostics == []
    # nodePorts are still allocated for them: that is the API server's job, whoever balances the load
    assert "default/theirs:80/TCP" in result.node_ports


def test_pools_restricted_to_a_class_serve_only_that_class() -> None:
    options = Options(
        pools=(
            Pool(name="gold", addresses=("192.0.2.1-192.0.2.1",), service_classes=("gold",)),
            Pool(name="default", addresses=("198.51.100.1-198.51.100.1",)),
        ),
        load_balancer_class="gold",
    )
    services = keyed(service("unset", type="LoadBalancer"))
    result, _ = allocate(services, Allocations(), options)
    # an unset class counts as ours, "gold"
    assert result.load_balancer_ips == {"default/unset": "192.0.2.1"}
    options = Options(pools=options.pools)
    result, diagnostics = allocate(services, Allocations(), options)
    assert result.load_balancer_ips == {"default/unset": "198.51.100.1"}
    assert diagnostics == []


def test_no_pool_for_the_namespace_is_reported() -> None:
    options = Options(pools=(POOLS[0],))
    _, diagnostics = allocate(keyed(service("y", "b", type="LoadBalancer")), Allocations(), options)
    assert errors(diagnostics) == [
        (
            "Service b/y",
            "spec.type",
            "no address pool assigns addresses automatically to namespace b and loadBalancerClass "
            "kubegate.io/load-balancer",
        )
    ]


def test_load_balancer_ip_is_released_when_the_type_changes() -> None:
    previous = Allocations(
        load_balancer_ips={"default/a": "198.51.100.10"}, node_ports={"default/a:80/TCP": 30001}
    )
    result, _ = allocate(keyed(service("a")), previous, LB_OPTIONS)
    assert result.load_balancer_ips == {} and result.node_ports == {}


def test_ipv6_slash_64_pool_allocates_without_enumerating_it() -> None:
    options = Options(pools=(Pool(name="v6", addresses=("2001:db8::/64",)),))
    services = keyed(*(service(f"s{i:03}", type="LoadBalancer", created=f"{i:03}") for i in range(100)))
    started = time.perf_counter()
    result, diagnostics = allocate(services, Allocations(), options)
    assert time.perf_counter() - started < 1.0
    assert diagnostics == []
    assert result.load_balancer_ips["default/s000"] == "2001:db8::"
    assert result.load_balancer_ips["default/s099"] == "2001:db8::63"


def test_invalid_service_cidr_is_reported_on_each_service_instead_of_raising() -> None:
    _, diagnostics = allocate(keyed(service("a")), Allocations(), Options(service_cidr="10.96.0.0/33"))
    [(_, field, message)] = errors(diagnostics)
    assert field == "spec.clusterIP" and message.startswith("the service CIDR is invalid")


def test_diagnostics_name_the_service() -> None:
    _, diagnostics = allocate(keyed(service("a", "team", cluster_ip="1.2.3.4")), Allocations(), OPTIONS)
    assert [d.object for d in diagnostics] == [ObjectKey("Service", "team", "a")]


# --------------------------------------------------------------------------------------------------
# Properties

PROPERTY_OPTIONS = Options(
    service_cidr="10.96.0.0/29",
    node_port_range=(30000, 30007),
    pools=(
        Pool(name="ns-a", addresses=("192.0.2.0/30",), namespaces=("a",)),
        Pool(name="small", addresses=("198.51.100.1-198.51.100.4", "2001:db8::1-2001:db8::2")),
        Pool(name="manual", addresses=("203.0.113.0/30",), auto_assign=False),
    ),
)
CLUSTER_IPS = [str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.96.0.0")) + i)) for i in range(10)]
LB_IPS = [
    "192.0.2.1",
    "192.0.2.3",
    "198.51.100.2",
    "198.51.100.9",
    "2001:db8::2",
    "203.0.113.1",
    "203.0.113.2",
]
NODE_PORTS = list(range(29998, 30010))


@st.composite
def service_sets(draw: st.DrawFn) -> Services:
    count = draw(st.integers(min_value=0, max_value=14))
    names = draw(
        st.lists(st.sampled_from("abcdefghijklmnopqrstu"), min_size=count, max_size=count, unique=True)
    )
    services: Services = {}
    for name in names:
        namespace = draw(st.sampled_from(["a", "b"]))
        kind = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]))
        port_numbers = draw(st.lists(st.sampled_from([53, 80, 443]), max_size=3, unique=True))
        ports = []
        for number in port_numbers:
            for protocol in draw(st.sets(st.sampled_from(["TCP", "UDP"]), min_size=1)):
                ports.append(
                    ServicePort(
                        port=number,
                        protocol=protocol,
                        node_port=draw(st.none() | st.sampled_from(NODE_PORTS)),
                    )
                )
        services[(namespace, name)] = service(
            name,
            namespace,
            type=kind,
            ports=sorted(ports, key=lambda p: (p.port, p.protocol)),
            created=draw(st.sampled_from(["", "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z"])),
            cluster_ip=draw(st.sampled_from(["", "", "", "None", *CLUSTER_IPS])),
            load_balancer_ip=draw(st.sampled_from(["", "", *LB_IPS])),
            load_balancer_class=draw(st.sampled_from([None, None, "other"])),
            allocate_node_ports=draw(st.booleans()),
            status_ip=draw(st.sampled_from(["", "", *LB_IPS])),
            annotations=draw(
                st.sampled_from(
                    [{}, {}, {"kubegate.io/address-pool": "manual"}, {"metallb.io/address-pool": "ns-a"}]
                )
            ),
        )
    return services


@st.composite
def previous_allocations(draw: st.DrawFn) -> Allocations:
    holders = [f"{ns}/{name}" for ns in "ab" for name in "abcdefghijklmnopqrstu"]
    cluster = draw(
        st.dictionaries(st.sampled_from(holders), st.sampled_from([*CLUSTER_IPS, "junk"]), max_size=8)
    )
    load_balancer = draw(st.dictionaries(st.sampled_from(holders), st.sampled_from(LB_IPS), max_size=8))
    port_keys = [f"{h}:{p}/{proto}" for h in holders for p in (53, 80, 443) for proto in ("TCP", "UDP")]
    node_ports = draw(st.dictionaries(st.sampled_from(port_keys), st.sampled_from(NODE_PORTS), max_size=10))
    return Allocations(cluster_ips=cluster, node_ports=node_ports, load_balancer_ips=load_balancer)


def _holder(key: str) -> str:
    return key.rpartition(":")[0]


def check_invariants(services: Services, result: Allocations) -> None:
    holders = {f"{ns}/{name}" for ns, name in services}
    # no two holders share a value
    assert len(set(result.cluster_ips.values())) == len(result.cluster_ips)
    assert len(set(result.load_balancer_ips.values())) == len(result.load_balancer_ips)
    owner: dict[int, str] = {}
    protocols: dict[tuple[str, int], list[str]] = {}
    for key, port in result.node_ports.items():
        assert owner.setdefault(port, _holder(key)) == _holder(key), (port, key, owner[port])
        protocols.setdefault((_holder(key), port), []).append(key.rpartition("/")[2])
    for used in protocols.values():
        assert len(used) == len(set(used)), used
    # only existing Services hold anything, and every value is in its range
    network = ipaddress.ip_network(PROPERTY_OPTIONS.service_cidr)
    for holder, ip in result.cluster_ips.items():
        assert holder in holders
        address = ipaddress.ip_address(ip)
        assert address in network and address not in (network.network_address, network.broadcast_address)
        if holder != "default/kubernetes":
            assert address != network.network_address + 1
    low, high = PROPERTY_OPTIONS.node_port_range
    for key, port in result.node_ports.items():
        assert _holder(key) in holders and low <= port <= high
    for holder, ip in result.load_balancer_ips.items():
        namespace, name = holder.split("/")
        spec = services[(namespace, name)].spec
        assert spec.type == "LoadBalancer" and spec.load_balancer_class is None
        allowed = [p for p in PROPERTY_OPTIONS.pools if not p.namespaces or namespace in p.namespaces]
        assert any(_pool_contains(pool, ip) for pool in allowed), (holder, ip)


def _pool_contains(pool: Pool, ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    value = (address.version, int(address))
    return any(parse_address_range(text).holds(value) for text in pool.addresses)


@settings(max_examples=300, deadline=None)
@given(service_sets(), previous_allocations(), st.randoms(use_true_random=False))
def test_property_no_collisions_in_range_order_independent_and_stable(
    services: Services, previous: Allocations, shuffler: random.Random
) -> None:
    result, diagnostics = allocate(services, previous, PROPERTY_OPTIONS)
    check_invariants(services, result)
    # show with --hypothesis-show-statistics that contested and exhausted cases are exercised
    event(f"conflict reported: {any('already allocated' in d.message for d in diagnostics)}")
    event(f"pool or range exhausted: {any('no free' in d.message for d in diagnostics)}")

    shuffled_items = list(services.items())
    shuffler.shuffle(shuffled_items)
    assert allocate(dict(shuffled_items), previous, PROPERTY_OPTIONS) == (result, diagnostics)

    again, again_diagnostics = allocate(services, result, PROPERTY_OPTIONS)
    assert again == result
    # the same problems are reported again: a conflict's loser keeps losing to the same holder
    assert again_diagnostics == diagnostics


@settings(max_examples=300, deadline=None)
@given(service_sets(), previous_allocations(), st.data())
def test_property_removing_a_service_frees_only_its_values(
    services: Services, previous: Allocations, data: st.DataObject
) -> None:
    result, _ = allocate(services, previous, PROPERTY_OPTIONS)
    if not services:
        return
    removed = data.draw(st.sampled_from(sorted(services)))
    gone = f"{removed[0]}/{removed[1]}"
    remaining = {key: value for key, value in services.items() if key != removed}
    after, _ = allocate(remaining, result, PROPERTY_OPTIONS)
    check_invariants(remaining, after)
    for mine, theirs in (
        (result.cluster_ips, after.cluster_ips),
        (result.load_balancer_ips, after.load_balancer_ips),
    ):
        assert gone not in theirs
        # everyone else keeps what they had; only values the removed Service held can change hands
        for holder, value in mine.items():
            if holder != gone:
                assert theirs[holder] == value
        freed = {value for holder, value in mine.items() if holder == gone}
        for holder, value in theirs.items():
            assert holder in mine or value in freed or value not in mine.values()
    for key, port in result.node_ports.items():
        if _holder(key) == gone:
            assert key not in after.node_ports
        else:
            assert after.node_ports[key] == port
