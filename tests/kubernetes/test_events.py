"""Events for per-object problems, against the fake API server: content, dedup, rate bounds, failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from lightkube import AsyncClient

from kubegate.objects.kinds import Ingress, IngressSpec
from kubegate.objects.meta import ObjectKey, ObjectMeta, Origin
from kubegate.objects.snapshot import Snapshot
from kubegate.sources.files import Problem
from kubegate.sources.kubernetes.events import EventRecorder
from kubegate.translate.context import Diagnostic
from tests.fakes.apiserver import FakeApiServer
from tests.kubernetes.clients import client_for

WEB = ObjectKey("Ingress", "shop", "web")
BAD_PATH = Diagnostic(WEB, "spec.rules[0].http.paths[0].path", "error", "must start with /")
EVENTS_PATH = "/api/v1/namespaces/shop/events"


@pytest.fixture
async def client(api: FakeApiServer) -> AsyncIterator[AsyncClient]:
    made = client_for(api.url)
    yield made
    await made.close()


class Clocks:
    """Monotonic and wall time that tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += timedelta(seconds=seconds)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def recorder(client: AsyncClient, clocks: Clocks, **options: Any) -> EventRecorder:
    return EventRecorder(
        client,
        host="node-1",
        clock=lambda: clocks.now,
        wall_clock=lambda: clocks.wall,
        **options,
    )


def events(api: FakeApiServer, namespace: str = "shop") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api.objects("v1", "Event", namespace)
    return found


def writes(api: FakeApiServer, since: int = 0) -> list[tuple[str, str]]:
    return [(method, path.partition("?")[0]) for method, path in api.requests[since:] if method != "GET"]


SNAPSHOT = Snapshot.of(
    [Ingress(metadata=ObjectMeta(name="web", namespace="shop", uid="uid-web"), spec=IngressSpec())]
)


async def test_a_problem_becomes_a_warning_event_on_its_object(
    api: FakeApiServer, client: AsyncClient, clocks: Clocks
) -> None:
    report = await recorder(client, clocks).record([BAD_PATH], SNAPSHOT)
    assert report.created == [WEB]
    [event] = events(api)
    assert event["involvedObject"] == {
        "kind": "Ingress",
        "apiVersion": "networking.k8s.io/v1",
        "namespace": "shop",
        "name": "web",
        "uid": "uid-web",
    }
    assert event["type"] == "Warning"
    assert event["reason"] == "InvalidIngress"
    assert event["message"] == "spec.rules[0].http.paths[0].path: must start with /"
    assert event["count"] == 1
    assert event["source"] == {"component": "kubegate", "host": "node-1"}
    assert event["reportingComponent"] == "kubegate"
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-12-01T12:00:00Z"
    assert event["metadata"]["name"].startswith("web.")


async def test_the_same_problem_again_bumps_the_count(
    api: FakeApiServer, client: AsyncClient, clocks: Clocks
) -> None:
    events_recorder = recorder(client, clocks, repeat_interval=60.0)
    await events_recorder.record([BAD_PATH], SNAPSHOT)
    before = len(api.requests)

    # every translation reports it again; within the repeat interval nothing is written
    clocks.advance(10)
    report = await events_recorder.record([BAD_PATH, BAD_PATH], SNAPSHOT)
    assert report.deferred == 1
    assert api.requests[before:] == []

    clocks.advance(60)
    report = await events_recorder.record([BAD_PATH], SNAPSHOT)
    assert report.updated == [WEB]
    [event] = events(api)
    # both occurrences since the first write are counted
    assert event["count"] == 3
    assert event["firstTimestamp"] == "2026-12-01T12:00:00Z"
    assert event["lastTimestamp"] == "2026-12-01T12:01:10Z"
    assert writes(api, before) == [("PATCH", f"{EVENTS_PATH}/{event['metadata']['name']}")]


async def test_a_different_problem_is_a_different_event(
    api: FakeApiServer, client: AsyncClient, clocks: Clocks
) -> None:
    events_recorder = recorder(client, clocks)
    other = Diagnostic(WEB, "spec.tls[0].secretName", "warning", "Secret shop/cert not found")
    await events_recorder.record([BAD_PATH], SNAPSHOT)
    await events_recorder.record([BAD_PATH, other], SNAPSHOT)
    found = {event["reason"]: event for event in events(api)}
    assert set(found) == {"InvalidIngress", "IngressWarning"}
    assert found["IngressWarning"]["message"] == "spec.tls[0].secretName: Secret shop/cert not found"


async def test_load_problems_and_cluster_scoped_objects(
    api: FakeApiServer, client: AsyncClient, clocks: Clocks
) -> None:
    problem = Problem(
        Origin("kubernetes", 0, 0),
        ObjectKey("IngressClass", "", "kubegate"),
        "spec.controller",
        "must be a path",
    )
    unnamed = Problem(
        Origin("kubernetes", 0, 0), ObjectKey("Service", "shop", ""), "metadata.name", "is required"
    )
    no_object = Problem(Origin("kubernetes", 0, 0), None, "", "the watch failed")
    report = await recorder(client, clocks).record([problem, unnamed, no_object])
    assert report.created == [ObjectKey("IngressClass", "", "kubegate")]
    # Events for cluster-scoped objects live in "default", as client-go puts them
    [event] = events(api, "default")
    assert event["involvedObject"]["kind"] == "IngressClass"
    assert "namespace" not in event["involvedObject"]
    assert event["reason"] == "InvalidIngressClass"


async def test_writes_are_rate_bounded_per_object(
    api: FakeApiServer, client: AsyncClient, clocks: Clocks
) -> None:
    events_recorder = recorder(client, clocks, object_burst=2, object_refill_seconds=300)
    problems = [Diagnostic(WEB, f"spec.rules[{index}].host", "error", "invalid host") for index in range(4)]
    report = await events_recorder.record(problems, SNAPSHOT)
    assert len(report.created) == 2
    assert report.dropped == 2
    assert len(events(api)) == 2
    # another object has its own budget
    other = Diagnostic(ObjectKey("Ingress", "shop", "api"), "spec", "error", "no rules")
    assert (await events_recorder.record([other])).created == [ObjectKey("Ingress", "shop", "api")]
    # the budget refills with time: one token after 300 s, spent on the first problem's repeat
    clocks.advance(300)
    report = await events_recorder.record(problems, SNAPSHOT)
    assert report.updated == [WEB]
    assert report.created == []
    assert report.dropped == 3


async def test_an_expired_event_is_created_again_with_the_running_count(
    api: FakeApiServer, client: AsyncClient, clocks: Clocks
) -> None:
    events_recorder = recorder(client, clocks, repeat_interval=1.0)
    await events_recorder.record([BAD_PATH], SNAPSHOT)
    [first] = events(api)
    api.delete("v1", "Event", "shop", first["metadata"]["name"])
    clocks.advance(5)
    report = await events_recorder.record([BAD_PATH], SNAPSHOT)
    assert report.created == [WEB]
    [again] = events(api)
    assert again["count"] == 2
    assert again["metadata"]["name"] != first["metadata"]["name"]


async def test_followers_log_but_write_nothing(
    api: FakeApiServer, client: AsyncClient, clocks: Clocks, caplog: pytest.LogCaptureFixture
) -> None:
    events_recorder = recorder(client, clocks, is_leader=lambda: False)
    before = len(api.requests)
    with caplog.at_level(logging.WARNING, logger="kubegate.kubernetes.events"):
        await events_recorder.record([BAD_PATH], SNAPSHOT)
        await events_recorder.record([BAD_PATH], SNAPSHOT)
    assert api.requests[before:] == []
    # logged once, naming the object and field, however often it repeats
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [str(BAD_PATH)]
    assert "Ingress shop/web spec.rules[0].http.paths[0].path: must start with /" in messages[0]


async def test_logging_can_be_left_to_the_caller(
    api: FakeApiServer, client: AsyncClient, clocks: Clocks, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="kubegate.kubernetes.events"):
        report = await recorder(client, clocks, log_problems=False).record([BAD_PATH], SNAPSHOT)
    assert report.created == [WEB]
    assert caplog.records == []


async def test_api_failures_are_reported_not_raised(api: FakeApiServer, clocks: Clocks) -> None:
    class Refusing(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(
                403,
                json={"kind": "Status", "code": 403, "reason": "Forbidden", "message": "events is forbidden"},
            )

    refusing = client_for(api.url, Refusing())
    try:
        report = await recorder(refusing, clocks).record([BAD_PATH], SNAPSHOT)
    finally:
        await refusing.close()
    assert report.created == []
    assert report.failed == [(WEB, "403 Forbidden: events is forbidden")]


async def test_long_messages_are_cut(api: FakeApiServer, client: AsyncClient, clocks: Clocks) -> None:
    long = Diagnostic(WEB, "spec", "error", "x" * 5000)
    await recorder(client, clocks).record([long], SNAPSHOT)
    [event] = events(api)
    assert len(event["message"]) == 1024
    assert event["message"].endswith("...")


async def test_run_records_the_latest_submitted_batch(
    api: FakeApiServer, client: AsyncClient, clocks: Clocks
) -> None:
    events_recorder = recorder(client, clocks)
    task = asyncio.create_task(events_recorder.run())
    try:
        events_recorder.submit([BAD_PATH], SNAPSHOT)
        async with asyncio.timeout(5):
            while not events(api):
                await asyncio.sleep(0.02)
        assert [event["reason"] for event in events(api)] == ["InvalidIngress"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
