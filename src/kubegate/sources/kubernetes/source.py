"""The Kubernetes source: one informer per kind, merged into the view the store reads.

``KubernetesSource`` keeps, per object, its decoded form (a ``Loaded``) or its problems, updated one
object at a time as the informers report changes: ``load()`` assembles a ``LoadResult`` from those without
decoding anything, so a change to one of 1,000 Ingresses costs one decode. ``changed`` is set on every
change; ``wait_synced()`` returns once every informer has its first list, and nothing should be
translated before then (a Service seen before its Endpoints would briefly serve 503s).

Problems of Ingresses that name another controller's IngressClass are not ours to report (ingress-nginx
ignores them too); they are left out of ``load()``. Class-less ones are reported, since they may be ours.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable

import httpx2
import msgspec

from kubegate.objects.kinds import IngressClass
from kubegate.objects.meta import ObjectKey
from kubegate.sources.files import Loaded, LoadResult, Problem
from kubegate.sources.kubernetes.background import cancel_all
from kubegate.sources.kubernetes.config import KubeConnection
from kubegate.sources.kubernetes.informer import (
    ORIGIN,
    RESOURCES,
    WATCH_TIMEOUT_SECONDS,
    Backoff,
    Entry,
    Informer,
    Resource,
)
from kubegate.translate.classes import LEGACY_CLASS_VALUE
from kubegate.translate.context import DEFAULT_CONTROLLER_NAME

log = logging.getLogger("kubegate.kubernetes")

# API events come one object at a time, not in editor bursts: a short hold-off is enough to batch a
# rollout's endpoint updates without adding much latency
COALESCE_SECONDS = 0.02


# what a node agent needs (its ClusterIP and nodePort rules): no Ingresses, classes or Secrets, so its
# service account needs no access to Secrets
SERVICE_RESOURCES: tuple[Resource, ...] = tuple(
    r for r in RESOURCES if r.kind in {"Service", "Endpoints", "EndpointSlice", "Pod"}
)


class KubernetesSource:
    """Objects from the API server, for the reconciler. ``start()``, then ``wait_synced()``, then
    ``load()`` whenever ``changed`` fires; ``stop()`` at the end."""

    coalesce_seconds = COALESCE_SECONDS

    def __init__(
        self,
        connection: KubeConnection,
        *,
        namespace: str | None = None,
        controller_name: str = DEFAULT_CONTROLLER_NAME,
        resources: Iterable[Resource] = RESOURCES,
        backoff_initial: float = 0.5,
        backoff_maximum: float = 30.0,
        watch_timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self.connection = connection
        self.namespace = namespace
        self.controller_name = controller_name
        self.resources = tuple(resources)
        self.changed = asyncio.Event()
        self.informers: list[Informer] = []
        self._backoff = (backoff_initial, backoff_maximum)
        self._watch_timeout = watch_timeout_seconds
        self._rng = rng if rng is not None else random.Random()
        self._http: httpx2.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._objects: dict[ObjectKey, Loaded] = {}
        self._problems: dict[ObjectKey, tuple[Problem, ...]] = {}
        # the class each Ingress with problems names, and each IngressClass's controller
        self._problem_classes: dict[ObjectKey, str] = {}
        self._controllers: dict[str, str] = {}
        # bumped on every change; load() rebuilds its tuples only when it moved
        self.generation = 0
        # changes that altered nothing kubegate reads, so did not signal `changed`
        self.quiet_changes = 0
        self._built: tuple[int, LoadResult] | None = None

    def __str__(self) -> str:
        scope = f"namespace {self.namespace}" if self.namespace is not None else "all namespaces"
        return f"{self.connection.server} ({scope})"

    def _only_version_moved(self, key: ObjectKey, entry: Entry) -> bool:
        """The new version reads the same as the old one apart from its resourceVersion: fields we do not
        decode changed (managedFields, a Pod condition's timestamps, status we do not read)."""
        old = self._objects.get(key)
        if old is None or entry.object is None or self._problems.get(key, ()) != entry.problems:
            return False
        version = old.obj.metadata.resource_version
        aligned = msgspec.structs.replace(
            entry.object, metadata=msgspec.structs.replace(entry.object.metadata, resource_version=version)
        )
        return bool(aligned == old.obj)

    def _on_change(self, key: ObjectKey, entry: Entry | None) -> None:
        # still stored (the cache stays exact), but nothing to reload for
        quiet = entry is not None and self._only_version_moved(key, entry)
        if quiet:
            self.quiet_changes += 1
        self._problem_classes.pop(key, None)
        if key.kind == "IngressClass":
            self._controllers.pop(key.name, None)
        if entry is None:
            self._objects.pop(key, None)
            self._problems.pop(key, None)
        else:
            if isinstance(entry.object, IngressClass):
                self._controllers[key.name] = entry.object.spec.controller
            if entry.problems and entry.ingress_class is not None:
                self._problem_classes[key] = entry.ingress_class
            if entry.object is None:
                self._objects.pop(key, None)
            else:
                self._objects[key] = Loaded(entry.object, ORIGIN)
            if entry.problems:
                self._problems[key] = entry.problems
            else:
                self._problems.pop(key, None)
        self.generation += 1
        if not quiet:
            self.changed.set()

    async def start(self) -> None:
        """Start one informer per kind and wait until each has listed once (the store must not translate a
        partial view). Raises KubeConfigError for a connection that cannot be set up."""
        self.start_informers()
        log.info("waiting for the first list of every kind from %s", self)
        await self.wait_synced()
        log.info(
            "synced %d objects (%d with problems) from %s", len(self._objects), len(self._problems), self
        )

    def start_informers(self) -> None:
        """Start one informer per kind, without waiting (idempotent)."""
        if self._tasks:
            return
        self._http = self.connection.http_client()
        for resource in self.resources:
            informer = Informer(
                self._http,
                resource,
                self._on_change,
                namespace=self.namespace,
                backoff=Backoff(*self._backoff),
                watch_timeout_seconds=self._watch_timeout,
                rng=self._rng,
            )
            self.informers.append(informer)
            self._tasks.append(asyncio.create_task(informer.run(), name=f"informer {resource.kind}"))
        log.info("watching %s on %s", ", ".join(r.kind for r in self.resources), self)

    @property
    def synced(self) -> bool:
        return bool(self.informers) and all(informer.synced.is_set() for informer in self.informers)

    async def wait_synced(self) -> None:
        """Until every informer has listed once. Failures are retried (and logged) meanwhile."""
        for informer in self.informers:
            await informer.synced.wait()

    async def follow(self, trigger: asyncio.Event) -> None:
        """Set ``trigger`` whenever an object changes; runs until cancelled."""
        await self.wait_synced()
        while True:
            await self.changed.wait()
            self.changed.clear()
            trigger.set()

    def load(self) -> LoadResult:
        """Everything the informers hold now, as the store reads it. Decodes nothing."""
        if self._built is not None and self._built[0] == self.generation:
            return self._built[1]
        problems = tuple(
            problem
            for key, found in self._problems.items()
            if not self._belongs_to_another_controller(key)
            for problem in found
        )
        result = LoadResult(tuple(self._objects.values()), problems, ())
        self._built = (self.generation, result)
        return result

    def describe(self) -> list[str]:
        """One line per informer, for /debug/informers: where each watch stands and how it has fared."""
        lines = [f"source {self}: {'synced' if self.synced else 'not synced'}, {len(self._objects)} objects"]
        for informer in self.informers:
            state = "synced" if informer.synced.is_set() else "listing"
            line = (
                f"{informer.resource.kind}: {state} resourceVersion={informer.resource_version or '-'} "
                f"objects={len(informer.cache)} lists={informer.lists} watches={informer.watches} "
                f"expired={informer.expirations} failures={informer.failures}"
            )
            if informer.last_error:
                line += f" last_error={informer.last_error}"
            lines.append(line)
        return lines

    def _belongs_to_another_controller(self, key: ObjectKey) -> bool:
        class_name = self._problem_classes.get(key)
        if class_name is None or class_name == LEGACY_CLASS_VALUE:
            return False
        controller = self._controllers.get(class_name)
        # a class that does not exist (yet) is not ours either, as the class pass decides
        return controller != self.controller_name

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        if self._http is not None:
            await self._http.aclose()
            self._http = None
