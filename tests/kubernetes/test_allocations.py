"""Allocations with the Kubernetes source: seeded from the cluster, claimed by the leader, never twice."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import LoadBalancerIngress as ApiLoadBalancerIngress
from lightkube.models.core_v1 import LoadBalancerStatus as ApiLoadBalancerStatus
from lightkube.models.core_v1 import ServiceStatus as ApiServiceStatus
from lightkube.models.meta_v1 import ObjectMeta as ApiObjectMeta
from lightkube.models.meta_v1 import Status
from lightkube.resources.core_v1 import Service as ApiService
from lightkube.resources.core_v1 import ServiceStatus

from kubegate.objects.kinds import (
    LoadBalancerIngress,
    LoadBalancerStatus,
    Service,
    ServicePort,
    ServiceSpec,
)
from kubegate.objects.kinds import (
    ServiceStatus as KubeServiceStatus,
)
from kubegate.objects.meta import ObjectMeta
from kubegate.objects.snapshot import Snapshot
from kubegate.sources.kubernetes.allocations import (
    ClusterAllocations,
    allocations_from_cluster,
    restrict_to_status,
)
from kubegate.sources.kubernetes.status_writer import StatusWriter
from kubegate.translate import translate
from kubegate.translate.context import Options, Pool

POOL = Pool(name="test", addresses=("10.0.0.0/30",))
OPTIONS = Options(pools=(POOL,))


def make_service(
    name: str,
    *,
    kind: str = "LoadBalancer",
    shows: tuple[str, ...] = (),
    created: str = "2026-01-01T00:00:00Z",
    version: int = 1,
    requested: str = "",
    **spec: Any,
) -> Service:
    return Service(
        metadata=ObjectMeta(
            name=name, namespace="default", creation_timestamp=created, resource_version=str(version)
        ),
        spec=ServiceSpec(
            **{"type": kind, "ports": (ServicePort(port=80),), "load_balancer_ip": requested, **spec}
        ),
        status=KubeServiceStatus(
            load_balancer=LoadBalancerStatus(ingress=tuple(LoadBalancerIngress(ip=ip) for ip in shows))
        ),
    )


def snapshot(*services: Service) -> Snapshot:
    return Snapshot.of(services)


# --------------------------------------------------------------------------------------------------
# Seeding from the cluster


def test_cluster_ips_and_node_ports_come_from_the_spec() -> None:
    service = make_service(
        "web",
        kind="NodePort",
        cluster_ip="10.96.0.20",
        ports=(ServicePort(port=80, node_port=30080), ServicePort(port=53, protocol="udp", node_port=30053)),
    )
    headless = make_service("db", kind="ClusterIP", cluster_ip="None")
    seeded = allocations_from_cluster(snapshot(service, headless), OPTIONS)
    assert seeded.cluster_ips == {"default/web": "10.96.0.20"}
    assert seeded.node_ports == {"default/web:80/TCP": 30080, "default/web:53/UDP": 30053}
    assert seeded.load_balancer_ips == {}


def test_load_balancer_ips_come_from_status_when_in_our_pools() -> None:
    seeded = allocations_from_cluster(
        snapshot(
            make_service("ours", shows=("192.0.2.1", "10.0.0.2")),
            make_service("outside", shows=("192.0.2.9",)),
            make_service("theirs", shows=("10.0.0.1",), load_balancer_class="example.com/cloud"),
            make_service("was-lb", kind="ClusterIP", shows=("10.0.0.3",)),
        ),
        OPTIONS,
    )
    # the first status IP inside a pool; other classes and non-LoadBalancers are not ours to seed
    assert seeded.load_balancer_ips == {"default/ours": "10.0.0.2"}


def test_an_ip_shown_twice_is_seeded_once_for_the_oldest() -> None:
    seeded = allocations_from_cluster(
        snapshot(
            make_service("young", shows=("10.0.0.1",), created="2026-02-01T00:00:00Z"),
            make_service("old", shows=("10.0.0.1",), created="2026-01-01T00:00:00Z"),
        ),
        OPTIONS,
    )
    assert seeded.load_balancer_ips == {"default/old": "10.0.0.1"}


def test_a_new_leader_keeps_every_written_ip() -> None:
    view = snapshot(
        make_service("a", shows=("10.0.0.2",), created="2026-03-01T00:00:00Z"),
        make_service("b", shows=("10.0.0.0",), created="2026-01-01T00:00:00Z"),
        make_service("c", created="2026-02-01T00:00:00Z"),
    )
    translation = translate(view, OPTIONS, allocations_from_cluster(view, OPTIONS))
    assert translation.service_status == {
        ("default", "a"): ("10.0.0.2",),
        ("default", "b"): ("10.0.0.0",),
        ("default", "c"): ("10.0.0.1",),
    }


service_states = st.builds(
    lambda kind, shows, node_port, created: make_service(
        "x",
        kind=kind,
        shows=shows,
        created=created,
        ports=(ServicePort(port=80, node_port=node_port),),
    ),
    st.sampled_from(("LoadBalancer", "ClusterIP", "NodePort")),
    st.lists(st.sampled_from(("10.0.0.0", "10.0.0.1", "192.0.2.1")), max_size=2).map(tuple),
    st.one_of(st.none(), st.integers(30000, 30005)),
    st.sampled_from(("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "")),
)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.dictionaries(st.sampled_from(("a", "b", "c", "d")), service_states), min_size=1, max_size=8)
)
def test_memoised_seeding_gives_the_stateless_answer(changes: list[dict[str, Service]]) -> None:
    seeding = ClusterAllocations()
    services: dict[tuple[str, str], Service] = {}
    for change in changes:
        # each step replaces some Services (new objects) and shares the others, as the store does
        services = dict(services)
        for name, state in change.items():
            services[("default", name)] = msgspec.structs.replace(
                state, metadata=msgspec.structs.replace(state.metadata, name=name)
            )
        view = Snapshot(services=services)
        assert seeding(view, OPTIONS) == allocations_from_cluster(view, OPTIONS)


def test_memoised_seeding_reuses_its_answer_and_notices_new_options() -> None:
    seeding = ClusterAllocations()
    view = snapshot(make_service("web", shows=("10.0.0.1",)))
    first = seeding(view, OPTIONS)
    assert seeding(Snapshot(services=view.services), OPTIONS) is first
    other_pool = Options(pools=(Pool(name="other", addresses=("192.0.2.0/24",)),))
    assert seeding(view, other_pool).load_balancer_ips == {}
    assert seeding(view, OPTIONS).load_balancer_ips == {"default/web": "10.0.0.1"}


# --------------------------------------------------------------------------------------------------
# Serving only what status shows


def test_restrict_to_status_removes_unwritten_ips_everywhere() -> None:
    view = snapshot(make_service("written", shows=("10.0.0.0",)), make_service("new"))
    translation = translate(view, OPTIONS, allocations_from_cluster(view, OPTIONS))
    assert translation.service_status[("default", "new")] == ("10.0.0.1",)

    served = restrict_to_status(translation, view)

    assert served.service_status == {("default", "written"): ("10.0.0.0",), ("default", "new"): ()}
    assert served.allocations.load_balancer_ips == {"default/written": "10.0.0.0"}
    lb_ips = {l4.name: l4.load_balancer_ips for l4 in served.routing.services}
    assert lb_ips == {"default/written": ("10.0.0.0",), "default/new": ()}
    # everything else is the translation's
    assert served.endpoints is translation.endpoints
    assert served.diagnostics == translation.diagnostics
    assert [msgspec.structs.replace(l4, load_balancer_ips=()) for l4 in served.routing.services] == [
        msgspec.structs.replace(l4, load_balancer_ips=()) for l4 in translation.routing.services
    ]


def test_restrict_to_status_returns_the_translation_itself_when_all_is_written() -> None:
    view = snapshot(make_service("written", shows=("10.0.0.0",)), make_service("plain", kind="ClusterIP"))
    translation = translate(view, OPTIONS, allocations_from_cluster(view, OPTIONS))
    assert restrict_to_status(translation, view) is translation


# --------------------------------------------------------------------------------------------------
# Property: leaders come and go, informers lag, Services come and go; no IP is ever in two statuses


class MemoryCluster:
    """Services as the API server holds them, with a resourceVersion and a history for lagging views."""

    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self.version = 0
        self.history: list[dict[str, Service]] = [{}]
        self.created = itertools.count()

    def commit(self) -> None:
        self.version += 1
        self.history.append(dict(self.services))

    def set_status(self, name: str, ips: tuple[str, ...]) -> None:
        current = self.services[name]
        ingress = tuple(LoadBalancerIngress(ip=ip) for ip in ips)
        self.services[name] = msgspec.structs.replace(
            current,
            metadata=msgspec.structs.replace(current.metadata, resource_version=str(self.version + 1)),
            status=KubeServiceStatus(load_balancer=LoadBalancerStatus(ingress=ingress)),
        )
        self.commit()


class MemoryClient:
    """The two calls StatusWriter makes for Services (patch /status, list), served from a MemoryCluster."""

    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster

    async def patch(self, res: type[Any], name: str, obj: dict[str, Any], **_: Any) -> None:
        assert res is ServiceStatus
        if name not in self.cluster.services:
            raise ApiError(status=Status(code=404, reason="NotFound", message=f'services "{name}" not found'))
        ingress = obj["status"]["loadBalancer"]["ingress"] or []
        self.cluster.set_status(name, tuple(entry["ip"] for entry in ingress if "ip" in entry))

    async def list(self, res: type[Any], **_: Any) -> AsyncIterator[ApiService]:
        assert res is ApiService
        for name, service in sorted(self.cluster.services.items()):
            ingress = [ApiLoadBalancerIngress(ip=entry.ip) for entry in service.status.load_balancer.ingress]
            yield ApiService(
                metadata=ApiObjectMeta(name=name, namespace="default"),
                status=ApiServiceStatus(loadBalancer=ApiLoadBalancerStatus(ingress=ingress)),
            )


@dataclass
class Replica:
    writer: StatusWriter
    # index into the cluster's history: what this replica's informer has seen
    seen: int = 0


NAMES = ("a", "b", "c", "d", "e", "f")
# "reconcile" on this replica index means: whichever replica leads now
LEADER = -1
POOL_IPS = ("10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3")

operations = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.sampled_from(NAMES), st.sampled_from(("", "", "", *POOL_IPS))),
        st.tuples(st.just("delete"), st.sampled_from(NAMES), st.just("")),
        st.tuples(st.just("to-cluster-ip"), st.sampled_from(NAMES), st.just("")),
        st.tuples(st.just("elect"), st.integers(0, 2), st.just("")),
        st.tuples(st.just("catch-up"), st.integers(0, 2), st.integers(0, 4)),
        # the leader reconciles more often than anything else happens, as it does on every change; its
        # informer has caught up by some number of changes first (often all, sometimes none)
        st.tuples(st.just("reconcile"), st.just(LEADER), st.integers(0, 6)),
        st.tuples(st.just("reconcile"), st.just(LEADER), st.integers(0, 6)),
        st.tuples(st.just("reconcile"), st.integers(0, 2), st.integers(0, 6)),
    ),
    min_size=10,
    max_size=60,
)


def assert_no_ip_shown_twice(cluster: MemoryCluster) -> None:
    holders: dict[str, str] = {}
    for name, service in cluster.services.items():
        for entry in service.status.load_balancer.ingress:
            assert entry.ip not in holders, (
                f"{entry.ip} is in the status of both {holders[entry.ip]} and {name}"
            )
            holders[entry.ip] = name


async def scenario(steps: list[tuple[str, Any, Any]]) -> dict[str, int]:
    """Run the steps, checking the invariants after each; returns how many patches were sent and how many
    claims refused (over 300 random examples, about 400 and 30: both paths are exercised)."""
    tally = {"patched": 0, "refused": 0}
    cluster = MemoryCluster()
    client = cast(AsyncClient, MemoryClient(cluster))
    leader = [0]
    replicas: list[Replica] = []
    for index in range(3):

        def is_leader(index: int = index) -> bool:
            return leader[0] == index

        replicas.append(Replica(StatusWriter(client, is_leader=is_leader)))

    for action, subject, argument in steps:
        if action == "create" and subject not in cluster.services:
            stamp = f"2026-01-01T00:00:{next(cluster.created):02d}Z"
            cluster.services[subject] = make_service(
                subject, created=stamp, version=cluster.version + 1, requested=argument
            )
            cluster.commit()
        elif action == "delete" and subject in cluster.services:
            del cluster.services[subject]
            cluster.commit()
        elif action == "to-cluster-ip" and subject in cluster.services:
            current = cluster.services[subject]
            cluster.services[subject] = msgspec.structs.replace(
                current, spec=msgspec.structs.replace(current.spec, type="ClusterIP", load_balancer_ip="")
            )
            cluster.commit()
        elif action == "elect":
            # the elector guarantees one leader at a time; the new one may have a stale view
            leader[0] = subject
        elif action == "catch-up":
            replica = replicas[subject]
            # informers only move forward, by any amount up to the present
            replica.seen = min(len(cluster.history) - 1, replica.seen + argument)
        elif action == "reconcile":
            replica = replicas[leader[0] if subject == LEADER else subject]
            replica.seen = min(len(cluster.history) - 1, replica.seen + argument)
            view = Snapshot.of(
                msgspec.structs.replace(service) for service in cluster.history[replica.seen].values()
            )
            translation = translate(view, OPTIONS, allocations_from_cluster(view, OPTIONS))
            report = await replica.writer.write(translation, view, OPTIONS)
            tally["patched"] += len(report.patched)
            tally["refused"] += len(report.refused)
            served = restrict_to_status(translation, view)
            # a replica serves an IP only where its view shows it, and never one IP for two Services
            for key, ips in served.service_status.items():
                shown = view.services[key].status.load_balancer.ingress
                assert set(ips) <= {entry.ip for entry in shown}
            all_served = [ip for ips in served.service_status.values() for ip in ips]
            assert len(all_served) == len(set(all_served))
        assert_no_ip_shown_twice(cluster)
    return tally


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_no_ip_is_ever_in_two_services_status(steps: list[tuple[str, Any, Any]]) -> None:
    asyncio.run(scenario(steps))


STALE_LEADER: list[tuple[str, Any, Any]] = [
    ("create", "c", ""),
    ("catch-up", 1, 1),  # replica 1 sees c as a LoadBalancer, and then nothing more
    ("to-cluster-ip", "c", ""),
    ("create", "a", ""),
    ("catch-up", 0, 3),
    ("reconcile", 0, 0),  # leader 0 writes 10.0.0.0 to a, the only LoadBalancer
    ("elect", 1, ""),
    ("reconcile", 1, 0),  # replica 1's view gives 10.0.0.0 to c
]


def test_the_scenario_catches_a_writer_that_trusts_its_stale_view() -> None:
    """The property above must be able to fail: with the fresh-list check disabled, a new leader whose
    view lags hands a written IP to a second Service."""
    steps = STALE_LEADER
    original = StatusWriter._fresh_status

    async def trusting(self: StatusWriter, report: Any) -> dict[tuple[str, str], tuple[str, ...]]:
        return {}  # nothing shown anywhere: every claim goes through

    StatusWriter._fresh_status = trusting  # type: ignore[method-assign]
    try:
        try:
            asyncio.run(scenario(steps))
        except AssertionError as error:
            assert "is in the status of both" in str(error)
        else:
            raise AssertionError("the scenario did not detect a doubly given IP")
    finally:
        StatusWriter._fresh_status = original  # type: ignore[method-assign]
    # the real writer refuses c's claim and writes nothing twice
    assert asyncio.run(scenario(steps)) == {"patched": 1, "refused": 1}
