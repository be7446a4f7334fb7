"""The informer against an in-process list/watch API: list, watch, resume, 410 relist, bad objects."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest

from kubegate.objects.kinds import Service
from kubegate.objects.meta import ObjectKey
from kubegate.sources.kubernetes import informer as informer_module
from kubegate.sources.kubernetes.informer import RESOURCES, Backoff, Entry, Informer, Resource
from tests.kubernetes.stub_api import StubApi

SERVICES = next(r for r in RESOURCES if r.kind == "Service")
INGRESSES = next(r for r in RESOURCES if r.kind == "Ingress")
CLASSES = next(r for r in RESOURCES if r.kind == "IngressClass")


def service(name: str, port: int = 80, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"port": port}]},
    }


def ingress(name: str, path_type: str = "Prefix") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "rules": [
                {
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": path_type,
                                "backend": {"service": {"name": "web", "port": {"number": 80}}},
                            }
                        ]
                    }
                }
            ]
        },
    }


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[ObjectKey, Entry | None]] = []

    def __call__(self, key: ObjectKey, entry: Entry | None) -> None:
        self.changes.append((key, entry))

    def deleted(self) -> list[str]:
        return [key.name for key, entry in self.changes if entry is None]


async def until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@asynccontextmanager
async def running(
    api: StubApi,
    resource: Resource = SERVICES,
    namespace: str | None = None,
    backoff: Backoff | None = None,
) -> AsyncIterator[tuple[Informer, Recorder]]:
    recorder = Recorder()
    async with httpx2.AsyncClient(base_url="http://api", transport=api.transport) as http:
        informer = Informer(
            http,
            resource,
            recorder,
            namespace=namespace,
            backoff=backoff or Backoff(initial=0.01, maximum=0.05),
            rng=random.Random(1),
        )
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), 3)
            yield informer, recorder
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


def names(informer: Informer) -> set[str]:
    return {key.name for key in informer.cache}


async def test_list_fills_the_cache_page_by_page_then_watches_from_its_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(informer_module, "LIST_PAGE_SIZE", 2)
    api = StubApi()
    for index in range(5):
        api.put("services", service(f"s{index}"))
    async with running(api) as (informer, _):
        assert names(informer) == {f"s{i}" for i in range(5)}
        entry = informer.cache[ObjectKey("Service", "default", "s3")]
        assert isinstance(entry.object, Service) and entry.object.spec.ports[0].port == 80
        await until(lambda: bool(api.watch_params()))
        assert [p.get("continue") for p in api.list_params()] == [None, "2", "4"]
        watch = api.watch_params()[0]
        assert watch["resourceVersion"] == str(api.version)
        assert watch["allowWatchBookmarks"] == "true"


async def test_watch_events_add_update_and_delete() -> None:
    api = StubApi()
    api.put("services", service("a"))
    async with running(api) as (informer, recorder):
        await until(lambda: bool(api.streams))
        api.put("services", service("b"))
        api.put("services", service("a", port=8080))
        await until(lambda: len(recorder.changes) == 3)
        a = informer.cache[ObjectKey("Service", "default", "a")].object
        assert isinstance(a, Service) and a.spec.ports[0].port == 8080
        api.delete("services", "default", "b")
        await until(lambda: recorder.deleted() == ["b"])
        assert names(informer) == {"a"}
        assert informer.resource_version == str(api.version)


async def test_a_dropped_watch_resumes_from_the_last_version_without_listing_again() -> None:
    api = StubApi()
    async with running(api) as (informer, recorder):
        await until(lambda: bool(api.streams))
        api.put("services", service("a"))
        await until(lambda: len(recorder.changes) == 1)
        seen = informer.resource_version
        api.drop_watches()
        # a change made while no watch is open is replayed by the next one
        api.put("services", service("b"))
        await until(lambda: "b" in names(informer))
        assert informer.lists == 1
        assert [p["resourceVersion"] for p in api.watch_params()][1] == seen
        assert [key.name for key, _ in recorder.changes] == ["a", "b"]


async def test_bookmarks_move_the_resume_version() -> None:
    api = StubApi()
    async with running(api) as (informer, _):
        await until(lambda: bool(api.streams))
        api.bookmark()
        await until(lambda: informer.resource_version == str(api.version))
        api.drop_watches()
        await until(lambda: len(api.watch_params()) == 2)
        assert api.watch_params()[1]["resourceVersion"] == str(api.version)


async def test_410_when_opening_the_watch_relists_and_reports_deletions_in_the_gap() -> None:
    api = StubApi()
    for name in ("keep", "gone", "changed"):
        api.put("services", service(name))
    async with running(api) as (informer, recorder):
        await until(lambda: bool(api.streams))
        before = len(recorder.changes)
        # while the watch is down: a deletion and an update, then the history is compacted
        api.watch_gate.clear()
        api.drop_watches()
        await until(lambda: not api.streams)
        api.delete("services", "default", "gone")
        api.put("services", service("changed", port=9090))
        api.compact()
        api.watch_gate.set()
        await until(lambda: informer.lists == 2 and bool(api.streams))
        assert informer.expirations >= 1
        assert names(informer) == {"keep", "changed"}
        later = recorder.changes[before:]
        # the unchanged object is neither re-decoded nor reported
        assert sorted((key.name, entry is None) for key, entry in later) == [
            ("changed", False),
            ("gone", True),
        ]


async def test_410_error_event_mid_stream_relists() -> None:
    api = StubApi()
    api.put("services", service("a"))
    api.put("services", service("b"))
    async with running(api) as (informer, recorder):
        await until(lambda: bool(api.streams))
        # the deletion is never sent to the stream: it happens "in the gap"
        stream = api.streams[0]
        api.streams.clear()
        api.delete("services", "default", "a")
        api.streams.append(stream)
        api.compact()
        api.expire_watches()
        await until(lambda: recorder.deleted() == ["a"])
        assert informer.lists == 2 and informer.expirations == 1
        assert names(informer) == {"b"}


class RecordingBackoff(Backoff):
    def __init__(self, initial: float, maximum: float) -> None:
        super().__init__(initial, maximum)
        self.delays: list[float] = []

    def next_delay(self, rng: random.Random) -> float:
        delay = super().next_delay(rng)
        self.delays.append(delay)
        return delay


async def test_other_error_events_resume_the_watch_without_listing_again() -> None:
    api = StubApi()
    api.put("services", service("a"))
    backoff = RecordingBackoff(initial=0.01, maximum=0.05)
    async with running(api, backoff=backoff) as (informer, _):
        await until(lambda: bool(api.streams))
        api.error_event(500, "etcd is unhappy")
        await until(lambda: informer.failures == 1)
        assert "error event 500: etcd is unhappy" in informer.last_error
        assert len(backoff.delays) == 1  # an error as the first event backs off (no hot loop)
        api.put("services", service("b"))
        await until(lambda: "b" in names(informer))
        assert informer.lists == 1 and informer.expirations == 0


async def test_watches_that_always_expire_are_relisted_with_back_off() -> None:
    api = StubApi()
    api.put("services", service("a"))
    backoff = RecordingBackoff(initial=0.05, maximum=0.05)
    async with running(api, backoff=backoff) as (informer, _):
        await until(lambda: bool(api.streams))
        api.always_expire = True
        api.drop_watches()
        await asyncio.sleep(0.5)
        # without a back-off this would be hundreds of lists; with it about one per 25-50 ms
        assert 3 <= informer.lists <= 25, informer.lists
        assert len(backoff.delays) >= informer.lists - 3
        api.always_expire = False
        api.put("services", service("b"))
        await until(lambda: "b" in names(informer))


async def test_watches_that_end_at_once_are_reopened_with_back_off() -> None:
    api = StubApi()
    backoff = RecordingBackoff(initial=0.05, maximum=0.05)
    async with running(api, backoff=backoff) as (informer, _):
        await until(lambda: bool(api.streams))
        api.end_watches_at_once = True
        api.drop_watches()
        await asyncio.sleep(0.5)
        assert 3 <= informer.watches <= 25, informer.watches
        assert informer.lists == 1
        api.end_watches_at_once = False
        api.put("services", service("b"))
        await until(lambda: "b" in names(informer))


async def test_a_bad_object_is_a_problem_and_the_others_stay() -> None:
    api = StubApi()
    api.put("ingresses", ingress("good"))
    api.put("ingresses", ingress("bad", path_type="Sometimes"))
    async with running(api, INGRESSES) as (informer, _):
        good = informer.cache[ObjectKey("Ingress", "default", "good")]
        bad = informer.cache[ObjectKey("Ingress", "default", "bad")]
        assert good.object is not None and not good.problems
        assert bad.object is None
        (problem,) = bad.problems
        assert problem.field == "spec.rules[0].http.paths[0].pathType"
        assert str(problem).startswith(
            "kubernetes Ingress default/bad spec.rules[0].http.paths[0].pathType: "
        )
        await until(lambda: bool(api.streams))
        api.put("ingresses", ingress("bad"))
        await until(lambda: informer.cache[ObjectKey("Ingress", "default", "bad")].object is not None)


async def test_garbage_that_is_not_an_object_is_a_problem_not_a_crash() -> None:
    api = StubApi()
    api.put("services", {"metadata": {"name": "odd"}, "spec": {"ports": "eighty"}})
    async with running(api) as (informer, _):
        entry = informer.cache[ObjectKey("Service", "default", "odd")]
        assert entry.object is None
        assert entry.problems[0].field == "spec.ports"


async def test_server_errors_are_retried_with_back_off() -> None:
    api = StubApi()
    api.fail_next = 3
    api.put("services", service("a"))
    async with running(api) as (informer, _):
        assert informer.failures == 3
        assert "HTTP 500" in informer.last_error and "try later" in informer.last_error
        assert names(informer) == {"a"}
        assert informer.backoff.failures == 0  # reset by the successful list


def test_back_off_doubles_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    rng = random.Random(7)
    delays = [backoff.next_delay(rng) for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    backoff.reset()
    assert backoff.next_delay(rng) <= 1.0


async def test_namespace_scoping_uses_the_namespaced_path_and_sees_only_that_namespace() -> None:
    api = StubApi()
    api.put("services", service("mine", namespace="team"))
    api.put("services", service("theirs", namespace="other"))
    async with running(api, namespace="team") as (informer, _):
        assert names(informer) == {"mine"}
        assert {r.url.path for r in api.requests} == {"/api/v1/namespaces/team/services"}


async def test_cluster_scoped_kinds_ignore_the_namespace() -> None:
    api = StubApi()
    api.put("ingressclasses", {"metadata": {"name": "ours"}, "spec": {"controller": "x/y"}})
    async with running(api, CLASSES, namespace="team") as (informer, _):
        assert set(informer.cache) == {ObjectKey("IngressClass", "", "ours")}
        assert {r.url.path for r in api.requests} == {"/apis/networking.k8s.io/v1/ingressclasses"}
