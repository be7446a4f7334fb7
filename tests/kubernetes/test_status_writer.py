"""Status write-back against the fake API server: content, no-op detection, clears, claims, retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest
from lightkube import AsyncClient

from kubegate.objects.decode import decode_object
from kubegate.objects.meta import ObjectKey
from kubegate.objects.snapshot import Snapshot
from kubegate.sources.kubernetes.allocations import allocations_from_cluster
from kubegate.sources.kubernetes.leader import LeaderElector
from kubegate.sources.kubernetes.status_writer import StatusWriter, load_balancer_ingress
from kubegate.translate import translate
from kubegate.translate.context import Options, Pool, Translation
from tests.fakes.apiserver import FakeApiServer
from tests.kubernetes.clients import client_for

OPTIONS = Options(pools=(Pool(name="test", addresses=("10.0.0.0/29",)),), publish_addresses=("192.0.2.10",))
SERVICE_STATUS_PATH = "/api/v1/namespaces/default/services/{}/status"
INGRESS_STATUS_PATH = "/apis/networking.k8s.io/v1/namespaces/default/ingresses/{}/status"


class Hooked(httpx2.AsyncBaseTransport):
    """Forwards to the real transport unless ``answer`` returns a response for the request."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.answer: Callable[[httpx2.Request], httpx2.Response | None] = lambda request: None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self.answer(request)
        if response is not None:
            return response
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
def transport() -> Hooked:
    return Hooked()


@pytest.fixture
async def client(api: FakeApiServer, transport: Hooked) -> AsyncIterator[AsyncClient]:
    made = client_for(api.url, transport)
    yield made
    await made.close()


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def service(name: str, kind: str = "LoadBalancer", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": kind, "selector": {"app": name}, "ports": [{"port": 80}], **spec},
    }


def ingress(name: str, class_name: str = "kubegate") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "ingressClassName": class_name,
            "defaultBackend": {"service": {"name": "web", "port": {"number": 80}}},
        },
    }


KUBEGATE_CLASS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "IngressClass",
    "metadata": {"name": "kubegate"},
    "spec": {"controller": "kubegate.io/ingress-controller"},
}


def snapshot_of(api: FakeApiServer) -> Snapshot:
    """What an up-to-date informer would hold."""
    objects = []
    for api_version, kind in (
        ("v1", "Service"),
        ("networking.k8s.io/v1", "Ingress"),
        ("networking.k8s.io/v1", "IngressClass"),
    ):
        for item in api.objects(api_version, kind):
            objects.append(decode_object({**item, "apiVersion": api_version, "kind": kind}))
    return Snapshot.of(objects)


def translated(snapshot: Snapshot, options: Options = OPTIONS) -> Translation:
    return translate(snapshot, options, allocations_from_cluster(snapshot, options))


def shown(api: FakeApiServer, kind: str, name: str) -> list[dict[str, str]]:
    api_version = "v1" if kind == "Service" else "networking.k8s.io/v1"
    found = api.get(api_version, kind, "default", name)
    assert found is not None
    ingress: list[dict[str, str]] = found.get("status", {}).get("loadBalancer", {}).get("ingress", [])
    return ingress


def writes(api: FakeApiServer, since: int = 0) -> list[tuple[str, str]]:
    return [request for request in api.requests[since:] if request[0] != "GET"]


def test_addresses_that_are_not_ips_become_hostnames() -> None:
    assert load_balancer_ingress(["10.0.0.1", "2001:db8::1", "lb.example.com"]) == [
        {"ip": "10.0.0.1"},
        {"ip": "2001:db8::1"},
        {"hostname": "lb.example.com"},
    ]


async def test_writes_load_balancer_ips_and_ingress_addresses_once(
    api: FakeApiServer, client: AsyncClient
) -> None:
    api.create(service("web"))
    api.create(service("internal", kind="ClusterIP"))
    api.create(KUBEGATE_CLASS)
    api.create(ingress("site"))
    writer = StatusWriter(client)
    snapshot = snapshot_of(api)
    translation = translated(snapshot)
    assert translation.service_status == {("default", "web"): ("10.0.0.0",)}

    report = await writer.write(translation, snapshot, OPTIONS)

    assert sorted(report.patched) == [
        ObjectKey("Ingress", "default", "site"),
        ObjectKey("Service", "default", "web"),
    ]
    assert not report.failed and not report.refused
    assert shown(api, "Service", "web") == [{"ip": "10.0.0.0"}]
    assert shown(api, "Ingress", "site") == [{"ip": "192.0.2.10"}]
    assert shown(api, "Service", "internal") == []
    assert sorted(writes(api)) == sorted(
        [("PATCH", INGRESS_STATUS_PATH.format("site")), ("PATCH", SERVICE_STATUS_PATH.format("web"))]
    )

    # the informer has caught up: nothing differs, so nothing is sent, not even a read
    before = len(api.requests)
    caught_up = snapshot_of(api)
    report = await writer.write(translated(caught_up), caught_up, OPTIONS)
    assert report.patched == []
    assert api.requests[before:] == []

    # the informer lags behind our own write: still nothing is sent
    report = await writer.write(translation, snapshot, OPTIONS)
    assert report.patched == []
    assert api.requests[before:] == []


async def test_a_new_writer_sends_nothing_when_the_cluster_already_shows_the_translation(
    api: FakeApiServer, client: AsyncClient
) -> None:
    api.create(service("web"))
    api.patch(
        "v1",
        "Service",
        "default",
        "web",
        {"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.3"}]}}},
        status=True,
    )
    snapshot = snapshot_of(api)
    translation = translated(snapshot)
    # the IP already shown is kept: a restart or a new leader moves nothing
    assert translation.service_status == {("default", "web"): ("10.0.0.3",)}
    before = len(api.requests)
    report = await StatusWriter(client).write(translation, snapshot, OPTIONS)
    assert report.patched == []
    assert api.requests[before:] == []


async def test_someone_elses_edit_of_our_status_is_put_right(api: FakeApiServer, client: AsyncClient) -> None:
    api.create(service("web"))
    writer = StatusWriter(client)
    snapshot = snapshot_of(api)
    translation = translated(snapshot)
    await writer.write(translation, snapshot, OPTIONS)
    api.patch(
        "v1",
        "Service",
        "default",
        "web",
        {"status": {"loadBalancer": {"ingress": [{"hostname": "x"}]}}},
        status=True,
    )
    edited = snapshot_of(api)
    report = await writer.write(translated(edited), edited, OPTIONS)
    assert report.patched == [ObjectKey("Service", "default", "web")]
    assert shown(api, "Service", "web") == [{"ip": "10.0.0.0"}]


async def test_status_is_removed_from_objects_we_no_longer_serve(
    api: FakeApiServer, client: AsyncClient
) -> None:
    api.create(service("web"))
    api.create(service("theirs", loadBalancerClass="example.com/cloud"))
    api.patch(
        "v1",
        "Service",
        "default",
        "theirs",
        {"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.5"}]}}},
        status=True,
    )
    api.create(KUBEGATE_CLASS)
    api.create(ingress("site"))
    api.create(ingress("other", class_name="nginx"))
    api.patch(
        "networking.k8s.io/v1",
        "Ingress",
        "default",
        "other",
        {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}},
        status=True,
    )
    writer = StatusWriter(client)
    snapshot = snapshot_of(api)
    await writer.write(translated(snapshot), snapshot, OPTIONS)
    assert shown(api, "Service", "web") == [{"ip": "10.0.0.0"}]

    # web stops being a LoadBalancer, site moves to another controller
    current = api.get("v1", "Service", "default", "web")
    assert current is not None
    # as the API server's type change does: LoadBalancer-only fields go with the type
    current["spec"] = {
        key: value
        for key, value in current["spec"].items()
        if key not in ("externalTrafficPolicy", "allocateLoadBalancerNodePorts", "healthCheckNodePort")
    }
    current["spec"]["ports"] = [
        {k: v for k, v in p.items() if k != "nodePort"} for p in current["spec"]["ports"]
    ]
    current["spec"]["type"] = "ClusterIP"
    api.replace(current)
    moved = api.get("networking.k8s.io/v1", "Ingress", "default", "site")
    assert moved is not None
    moved["spec"]["ingressClassName"] = "nginx"
    api.replace(moved)
    before = len(api.requests)
    changed = snapshot_of(api)
    report = await writer.write(translated(changed), changed, OPTIONS)

    assert sorted(report.patched) == [
        ObjectKey("Ingress", "default", "site"),
        ObjectKey("Service", "default", "web"),
    ]
    assert shown(api, "Service", "web") == []
    assert shown(api, "Ingress", "site") == []
    # another implementation's statuses are left alone, even with an address in our pool
    assert shown(api, "Service", "theirs") == [{"ip": "10.0.0.5"}]
    assert shown(api, "Ingress", "other") == [{"ip": "203.0.113.7"}]
    assert sorted(writes(api, before)) == sorted(
        [("PATCH", INGRESS_STATUS_PATH.format("site")), ("PATCH", SERVICE_STATUS_PATH.format("web"))]
    )


async def test_a_claim_on_an_ip_another_service_shows_is_refused(
    api: FakeApiServer, client: AsyncClient
) -> None:
    """A new leader whose informer has not seen the previous leader's write must not hand the same IP
    to a second Service: the fresh list before a claim catches it."""
    api.create(service("first"))
    api.create(service("second"))
    stale = snapshot_of(api)  # neither shows an IP yet
    api.patch(
        "v1",
        "Service",
        "default",
        "first",
        {"status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.0"}]}}},
        status=True,
    )
    # translated from the stale view, first gets 10.0.0.0 and second 10.0.0.1: fine; now make the
    # stale view hand 10.0.0.0 to second, as a view missing "first" entirely would
    stale_without_first = Snapshot(services={("default", "second"): stale.services[("default", "second")]})
    translation = translated(stale_without_first)
    assert translation.service_status == {("default", "second"): ("10.0.0.0",)}

    before = len(api.requests)
    report = await StatusWriter(client).write(translation, stale_without_first, OPTIONS)

    assert report.patched == []
    assert [key for key, _ in report.refused] == [ObjectKey("Service", "default", "second")]
    assert "default/first" in report.refused[0][1]
    assert writes(api, before) == []
    assert shown(api, "Service", "second") == []


async def test_followers_write_nothing(api: FakeApiServer, client: AsyncClient) -> None:
    api.create(service("web"))
    snapshot = snapshot_of(api)
    before = len(api.requests)
    report = await StatusWriter(client, is_leader=lambda: False).write(
        translated(snapshot), snapshot, OPTIONS
    )
    assert report.not_leader
    assert api.requests[before:] == []
    assert shown(api, "Service", "web") == []


async def test_losing_leadership_mid_pass_stops_writing(
    api: FakeApiServer, client: AsyncClient, transport: Hooked
) -> None:
    for name in ("a", "b", "c"):
        api.create(service(name))
    snapshot = snapshot_of(api)
    leading = [True]

    def lose_after_first_patch(request: httpx2.Request) -> httpx2.Response | None:
        if request.method == "PATCH":
            leading[0] = False  # the renewal failed while this request was on its way
        return None

    transport.answer = lose_after_first_patch
    writer = StatusWriter(client, is_leader=lambda: leading[0])
    report = await writer.write(translated(snapshot), snapshot, OPTIONS)
    assert report.not_leader
    assert len(report.patched) == 1
    assert sum(1 for name in ("a", "b", "c") if shown(api, "Service", name)) == 1


def status_response(code: int, reason: str) -> httpx2.Response:
    return httpx2.Response(
        code,
        json={
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": reason,
            "code": code,
            "message": reason,
        },
    )


async def test_transient_failures_are_retried(
    api: FakeApiServer, client: AsyncClient, transport: Hooked
) -> None:
    api.create(service("web"))
    failures = {"count": 0}

    def flaky(request: httpx2.Request) -> httpx2.Response | None:
        if request.method == "PATCH" and failures["count"] < 3:
            failures["count"] += 1
            if failures["count"] == 2:
                raise httpx2.ConnectError("connection refused", request=request)
            return status_response(503 if failures["count"] == 1 else 409, "ServiceUnavailable")
        return None

    transport.answer = flaky
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    snapshot = snapshot_of(api)
    report = await StatusWriter(client, sleep=sleep).write(translated(snapshot), snapshot, OPTIONS)
    assert report.patched == [ObjectKey("Service", "default", "web")]
    assert shown(api, "Service", "web") == [{"ip": "10.0.0.0"}]
    assert len(delays) == 3
    # exponential back-off with full jitter: each delay is within its doubling cap
    assert all(0 <= delay <= 0.2 * 2**attempt for attempt, delay in enumerate(delays))


async def test_a_refusal_is_reported_and_not_retried(
    api: FakeApiServer, client: AsyncClient, transport: Hooked
) -> None:
    api.create(service("web"))
    patches: list[str] = []

    def invalid(request: httpx2.Request) -> httpx2.Response | None:
        if request.method == "PATCH":
            patches.append(request.url.path)
            return status_response(422, "Invalid")
        return None

    transport.answer = invalid
    snapshot = snapshot_of(api)
    report = await StatusWriter(client, sleep=no_sleep).write(translated(snapshot), snapshot, OPTIONS)
    assert report.patched == []
    assert [key for key, _ in report.failed] == [ObjectKey("Service", "default", "web")]
    assert "422" in report.failed[0][1]
    assert len(patches) == 1


async def test_giving_up_after_the_attempts_and_trying_again_next_pass(
    api: FakeApiServer, client: AsyncClient, transport: Hooked
) -> None:
    api.create(service("web"))
    transport.answer = lambda request: (
        status_response(503, "ServiceUnavailable") if request.method == "PATCH" else None
    )
    snapshot = snapshot_of(api)
    writer = StatusWriter(client, sleep=no_sleep, attempts=3)
    report = await writer.write(translated(snapshot), snapshot, OPTIONS)
    assert [key for key, _ in report.failed] == [ObjectKey("Service", "default", "web")]
    transport.answer = lambda request: None
    report = await writer.write(translated(snapshot), snapshot, OPTIONS)
    assert report.patched == [ObjectKey("Service", "default", "web")]


async def test_an_object_deleted_meanwhile_is_skipped(api: FakeApiServer, client: AsyncClient) -> None:
    api.create(service("web"))
    snapshot = snapshot_of(api)
    api.delete("v1", "Service", "default", "web")
    report = await StatusWriter(client, sleep=no_sleep).write(translated(snapshot), snapshot, OPTIONS)
    assert report.patched == [] and report.failed == []


async def test_run_writes_the_latest_submitted_translation(api: FakeApiServer, client: AsyncClient) -> None:
    api.create(service("web"))
    writer = StatusWriter(client)
    task = asyncio.create_task(writer.run())
    try:
        snapshot = snapshot_of(api)
        writer.submit(translated(snapshot), snapshot, OPTIONS)
        async with asyncio.timeout(5):
            while not shown(api, "Service", "web"):
                await asyncio.sleep(0.02)
        assert shown(api, "Service", "web") == [{"ip": "10.0.0.0"}]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def leader_check(elector: LeaderElector) -> Callable[[], bool]:
    return lambda: elector.is_leader


async def test_after_a_hand_over_the_new_leader_keeps_written_ips_and_hands_out_free_ones(
    api: FakeApiServer,
) -> None:
    clients = [client_for(api.url), client_for(api.url)]
    electors = [
        LeaderElector(
            c,
            "kube-system",
            "kubegate",
            f"replica-{i}",
            lease_duration=1.0,
            renew_deadline=0.6,
            retry_period=0.1,
        )
        for i, c in enumerate(clients)
    ]
    writers = [StatusWriter(c, is_leader=leader_check(e)) for c, e in zip(clients, electors, strict=True)]
    tasks = [asyncio.create_task(electors[0].run())]
    try:
        async with asyncio.timeout(3):
            await electors[0].leading.wait()
        tasks.append(asyncio.create_task(electors[1].run()))
        api.create(service("web"))
        for writer in writers:  # both replicas reconcile; only the leader's writes reach the cluster
            snapshot = snapshot_of(api)
            await writer.write(translated(snapshot), snapshot, OPTIONS)
        assert shown(api, "Service", "web") == [{"ip": "10.0.0.0"}]

        tasks[0].cancel()  # replica 0 dies
        async with asyncio.timeout(3):
            await electors[1].leading.wait()
        api.create(service("api"))
        before = len(api.requests)
        snapshot = snapshot_of(api)
        report = await writers[1].write(translated(snapshot), snapshot, OPTIONS)
        assert report.patched == [ObjectKey("Service", "default", "api")]
        assert shown(api, "Service", "api") == [{"ip": "10.0.0.1"}]
        assert shown(api, "Service", "web") == [{"ip": "10.0.0.0"}]
        assert writes(api, before) == [("PATCH", SERVICE_STATUS_PATH.format("api"))]
        # the dead replica's writer refuses to write now
        assert (await writers[0].write(translated(snapshot), snapshot, OPTIONS)).not_leader
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()
