"""KubernetesSource: informers merged into the store's view, synced before use, decoded incrementally."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kubegate.objects.meta import ObjectKey
from kubegate.reconcile import Reconciler
from kubegate.sources.kubernetes import informer as informer_module
from kubegate.sources.kubernetes.config import KubeSettings, resolve
from kubegate.sources.kubernetes.source import KubernetesSource
from kubegate.store import object_key
from kubegate.translate.context import Options, Translation
from tests.kubernetes.stub_api import StubApi
from tests.kubernetes.test_config import kubeconfig
from tests.kubernetes.test_informer import ingress, service


@asynccontextmanager
async def source_on(
    api: StubApi, tmp_path: Path, namespace: str | None = None
) -> AsyncIterator[KubernetesSource]:
    connection = resolve(
        KubeSettings(kubeconfig=kubeconfig(tmp_path / "config", one="http://api")), transport=api.transport
    )
    source = KubernetesSource(connection, namespace=namespace, backoff_initial=0.01, backoff_maximum=0.05)
    try:
        yield source
    finally:
        await source.stop()


async def until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def keys(source: KubernetesSource) -> set[ObjectKey]:
    return {object_key(loaded.obj) for loaded in source.load().objects}


async def test_start_returns_only_when_every_kind_has_listed(tmp_path: Path) -> None:
    api = StubApi()
    api.put("services", service("web"))
    api.fail_next = 4  # the first requests fail, whichever informers send them
    async with source_on(api, tmp_path) as source:
        await asyncio.wait_for(source.start(), 5)
        assert source.synced
        assert all(informer.lists == 1 for informer in source.informers)
        assert sum(informer.failures for informer in source.informers) == 4
        assert keys(source) == {ObjectKey("Service", "default", "web")}


async def test_load_reflects_changes_and_reports_bad_objects_by_name(tmp_path: Path) -> None:
    api = StubApi()
    api.put("ingresses", ingress("good"))
    api.put("ingresses", ingress("bad", path_type="Sometimes"))
    async with source_on(api, tmp_path) as source:
        await source.start()
        result = source.load()
        assert [loaded.obj.metadata.name for loaded in result.objects] == ["good"]
        (problem,) = result.problems
        assert problem.object == ObjectKey("Ingress", "default", "bad")
        assert str(problem).startswith("kubernetes Ingress default/bad spec.rules[0].http.paths[0].pathType:")
        assert source.load() is result  # nothing changed: nothing rebuilt

        await until(lambda: len(api.streams) == len(source.informers))
        source.changed.clear()
        api.put("ingresses", ingress("bad"))
        await asyncio.wait_for(source.changed.wait(), 3)
        fixed = source.load()
        assert sorted(loaded.obj.metadata.name for loaded in fixed.objects) == ["bad", "good"]
        assert fixed.problems == ()

        api.delete("ingresses", "default", "good")
        await until(lambda: ObjectKey("Ingress", "default", "good") not in keys(source))


async def test_one_change_decodes_one_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = StubApi()
    for index in range(50):
        api.put("ingresses", ingress(f"web{index}"))
    decoded: list[str] = []
    original = informer_module.decode_entry

    def counting(resource: informer_module.Resource, raw: Any) -> informer_module.Entry:
        decoded.append(raw["metadata"]["name"])
        return original(resource, raw)

    monkeypatch.setattr(informer_module, "decode_entry", counting)
    async with source_on(api, tmp_path) as source:
        await source.start()
        assert len(decoded) == 50
        await until(lambda: len(api.streams) == len(source.informers))
        api.put("ingresses", ingress("web7", path_type="Exact"))
        await until(lambda: len(decoded) == 51)
        source.load()
        await asyncio.sleep(0.05)
        assert decoded[50:] == ["web7"]


async def test_reconciler_translates_from_the_source_and_follows_it(tmp_path: Path) -> None:
    api = StubApi()
    api.put("services", service("web"))
    published: list[Translation] = []
    async with source_on(api, tmp_path) as source:
        reconciler = Reconciler((), Options(addresses_from_spec=True), published.append, source=source)
        await reconciler.start()
        report = reconciler.reload()
        assert report.changed and len(published) == 1
        assert [s.name for s in published[0].routing.services] == ["default/web"]
        trigger = asyncio.Event()
        task = asyncio.create_task(reconciler.watch(trigger))
        try:
            await until(lambda: len(api.streams) == len(source.informers))
            api.put("services", service("api"))
            await until(lambda: len(published) == 2)
            assert [s.name for s in published[1].routing.services] == ["default/api", "default/web"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await reconciler.stop()


async def test_a_lasting_problem_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    api = StubApi()
    api.put("ingresses", ingress("bad", path_type="Sometimes"))
    api.put("services", service("web"))
    async with source_on(api, tmp_path) as source:
        reconciler = Reconciler((), Options(addresses_from_spec=True), lambda _: None, source=source)
        await reconciler.start()
        with caplog.at_level(logging.WARNING, logger="kubegate.reconcile"):
            reconciler.reload()
            await until(lambda: len(api.streams) == len(source.informers))
            api.put("services", service("web", port=81))
            await until(lambda: source.generation > 2)
            report = reconciler.reload()
        assert report.changed and len(report.problems) == 1
        logged = [r.getMessage() for r in caplog.records if "Ingress default/bad" in r.getMessage()]
        assert len(logged) == 1, logged


async def test_a_change_to_fields_we_do_not_read_signals_nothing(tmp_path: Path) -> None:
    api = StubApi()
    api.put("services", service("web"))
    async with source_on(api, tmp_path) as source:
        await source.start()
        await until(lambda: len(api.streams) == len(source.informers))
        source.changed.clear()
        touched = service("web")
        touched["metadata"]["managedFields"] = [{"manager": "kubectl", "operation": "Update"}]
        api.put("services", touched)
        await until(lambda: source.quiet_changes == 1)
        assert not source.changed.is_set()
        api.put("services", service("web", port=81))
        await asyncio.wait_for(source.changed.wait(), 3)
        assert source.quiet_changes == 1
