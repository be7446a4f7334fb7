"""Black-box: replicas of `serve --kubernetes` against the fake API server elect a leader, which writes
Service and Ingress status and Events; traffic to a LoadBalancer IP starts once its status is written, and
a hand-over never gives one IP to two Services."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from kubegate.app import Gateway
from kubegate.sources.kubernetes.controller import ControllerSettings
from tests.fakes.apiserver import FakeApiServer
from tests.kubernetes.test_serve_kubernetes import (
    backend,
    eventually,
    gateway,
    ingress,
    ingress_class,
    service,
)
from tests.proxy.helpers import echo_backends

# short timings so a hand-over fits a test; the ratios are the production ones
FAST = ControllerSettings(lease_duration=1.0, renew_deadline=0.6, retry_period=0.1)


def replica(
    api: FakeApiServer, tmp_path: Path, name: str, settings: ControllerSettings = FAST
) -> AbstractAsyncContextManager[Gateway]:
    """One replica of `serve --kubernetes`, campaigning for the test's Lease as `name`."""
    return gateway(
        api,
        tmp_path,
        controller=dataclasses.replace(
            settings, election_namespace="default", election_id="kubegate-test", identity=name
        ),
    )


async def until(what: str, check: Callable[[], Any], seconds: float = 5.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {seconds} s")


def lb_ips(api: FakeApiServer, name: str) -> list[str]:
    obj = api.get("v1", "Service", "default", name)
    assert obj is not None
    ingress_list = obj.get("status", {}).get("loadBalancer", {}).get("ingress", [])
    return [entry["ip"] for entry in ingress_list if "ip" in entry]


def leaders(*replicas: Gateway) -> list[Gateway]:
    return [gw for gw in replicas if gw.cluster is not None and gw.cluster.is_leader()]


async def test_the_leader_writes_load_balancer_and_ingress_status(api: FakeApiServer, tmp_path: Path) -> None:
    async with asyncio.timeout(30):
        api.create(ingress_class())
        # kubegate's own Service: its LoadBalancer IP is what Ingress status publishes
        api.create(service("gateway", type="LoadBalancer"))
        async with replica(
            api, tmp_path, "a", dataclasses.replace(FAST, publish_service=("default", "gateway"))
        ) as gw:
            ips = await until("the Service's status shows an IP", lambda: lb_ips(api, "gateway"))
            assert len(ips) == 1 and ips[0].startswith("127.0.100.")
            api.create(ingress("web", ("/", "gateway")))

            def ingress_status() -> list[dict[str, str]]:
                obj = api.get("networking.k8s.io/v1", "Ingress", "default", "web")
                assert obj is not None
                found: list[dict[str, str]] = obj.get("status", {}).get("loadBalancer", {}).get("ingress", [])
                return found

            assert await until("the Ingress's status shows the gateway's IP", ingress_status) == [
                {"ip": ips[0]}
            ]
            # the replica serves the IP now that the cluster shows it (the L4 table carries it)
            assert gw.reconciler.translation is not None
            served = {
                ip for svc in gw.reconciler.translation.routing.services for ip in svc.load_balancer_ips
            }
            assert ips[0] in served
            # nothing changed: no further status patches
            patches = [r for r in api.requests if r[0] == "PATCH" and "/status" in r[1]]
            await asyncio.sleep(0.5)
            assert [r for r in api.requests if r[0] == "PATCH" and "/status" in r[1]] == patches


async def test_traffic_through_an_ingress_follows_while_replicas_hand_over(
    api: FakeApiServer, tmp_path: Path
) -> None:
    async with asyncio.timeout(40), echo_backends("default/app") as ports:
        api.create(ingress_class())
        backend(api, "app", ports["default/app"])
        api.create(ingress("web", ("/", "app")))
        async with replica(api, tmp_path, "a") as first, replica(api, tmp_path, "b") as second:
            leader = (await until("one leader", lambda: leaders(first, second)))[0]
            assert len(leaders(first, second)) == 1
            follower = second if leader is first else first
            # both replicas serve traffic, leader or not
            await eventually(first, "/", (200, "default/app"))
            await eventually(second, "/", (200, "default/app"))
            api.create(service("one", type="LoadBalancer"))
            first_ip = (await until("Service one gets an IP", lambda: lb_ips(api, "one")))[0]
            # the leader goes away without releasing the Lease (a crash): the other takes over within
            # the lease duration and allocates the next Service an IP of its own
            assert leader.cluster is not None and leader.cluster.elector is not None
            for task in leader.cluster._tasks:
                task.cancel()
            started = time.monotonic()
            await until("the follower leads", lambda: leaders(follower), seconds=5)
            assert time.monotonic() - started < FAST.lease_duration + 1.0
            api.create(service("two", type="LoadBalancer"))
            second_ip = (await until("Service two gets an IP", lambda: lb_ips(api, "two")))[0]
            assert second_ip != first_ip
            assert lb_ips(api, "one") == [first_ip]
            await eventually(follower, "/", (200, "default/app"))


async def test_problems_become_events_on_their_object(api: FakeApiServer, tmp_path: Path) -> None:
    async with asyncio.timeout(30):
        api.create(ingress_class())
        # a backend Service that does not exist: a diagnostic on the Ingress
        api.create(ingress("broken", ("/", "missing")))
        async with replica(api, tmp_path, "a"):

            def events() -> list[dict[str, Any]]:
                found = api.objects("v1", "Event", "default")
                return [e for e in found if e.get("involvedObject", {}).get("name") == "broken"]

            recorded = await until("an Event on the Ingress", events)
            event = recorded[0]
            assert event["involvedObject"]["kind"] == "Ingress"
            assert event["type"] == "Warning"
            assert "missing" in event["message"]
