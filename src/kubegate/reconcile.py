"""The reconcile step: load from a source, diff in the store, translate, publish.

`Reconciler.reload()` is synchronous and cheap to call often: it takes everything the source holds (the
files, read again: they are the source of truth; or the Kubernetes informers' caches, decoded one object at
a time as they changed), lets the store decide whether anything changed, and only then translates with the
memoising Translator and hands the result to the publisher. The loop around it (`watch`) coalesces bursts
of change signals from the source before reloading.

A source is anything with `load()`, `start()`, `stop()`, `follow(trigger)` and a `coalesce_seconds`
hold-off (see `Source`); `FileSource` is the manifests on disk, `sources.kubernetes.KubernetesSource` the
API server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import watchfiles

from kubegate.objects.meta import ObjectKey, Origin
from kubegate.objects.snapshot import Snapshot
from kubegate.pipeline import place_diagnostics
from kubegate.sources.files import LoadResult, Problem, load_paths
from kubegate.state import StateError, load_allocations, save_allocations
from kubegate.store import Store
from kubegate.translate import Translator
from kubegate.translate.context import Allocations, Options, Translation

log = logging.getLogger("kubegate.reconcile")

# hold-off after the first file event, so a burst becomes one reload; capped so a steady stream of
# events cannot postpone the reload forever
COALESCE_SECONDS = 0.1
COALESCE_CAP_SECONDS = 1.0

# time for the file watcher to start; see watch()
WATCH_SETTLE_SECONDS = 0.3

Publisher = Callable[[Translation], None]


class Source(Protocol):
    """Where the reconciler's objects come from."""

    # hold-off after the first change signal, so a burst becomes one reload
    coalesce_seconds: float

    async def start(self) -> None:
        """Begin reading; returns once `load()` gives a complete view (the first full read)."""

    def load(self) -> LoadResult:
        """Everything the source holds now."""
        ...

    async def follow(self, trigger: asyncio.Event) -> None:
        """Set `trigger` whenever the source may have changed; runs until cancelled."""

    async def stop(self) -> None:
        """Release what `start()` took."""


class ClusterHooks(Protocol):
    """What the Kubernetes source adds around translation (sources.kubernetes.controller): allocations
    and publish addresses from the cluster, serving only what the cluster shows, writing status."""

    def prepare(self, snapshot: Snapshot, options: Options) -> tuple[Options, Allocations]:
        """The options and allocations to translate this snapshot with."""
        ...

    def serving(self, translation: Translation, snapshot: Snapshot) -> Translation:
        """The part of a translation this replica serves."""
        ...

    def translated(
        self, translation: Translation, snapshot: Snapshot, options: Options, problems: Sequence[Problem]
    ) -> None:
        """Called after each translation (status and Events are written from here)."""


class FileSource:
    """Manifest files and directories (and "-" for stdin), read again on every load."""

    coalesce_seconds = COALESCE_SECONDS

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    async def start(self) -> None:
        return None

    def load(self) -> LoadResult:
        return load_paths(self.paths)

    async def follow(self, trigger: asyncio.Event) -> None:
        watched = [path for path in self.paths if path != "-"]
        # the watcher needs a moment to register with the kernel; one catch-up reload after that picks up
        # edits made between the initial load and then (a no-op when there were none)
        asyncio.get_running_loop().call_later(WATCH_SETTLE_SECONDS, trigger.set)
        async for _ in watchfiles.awatch(*watched, debounce=50, step=20, recursive=True):
            trigger.set()

    async def stop(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ReloadReport:
    version: int
    changed: bool
    problems: tuple[Problem, ...]
    seconds: float


class Reconciler:
    def __init__(
        self,
        paths: Sequence[str],
        options: Options,
        publish: Publisher,
        state_file: Path | None = None,
        *,
        source: Source | None = None,
        cluster: ClusterHooks | None = None,
    ) -> None:
        self.paths = list(paths)
        self.source: Source = source if source is not None else FileSource(paths)
        self.cluster = cluster
        self.options = options
        self.store = Store()
        self.translator = Translator()
        self.publish = publish
        self.state_file = state_file
        self.allocations = load_allocations(state_file) if state_file is not None else Allocations()
        self.translation: Translation | None = None
        self.reloads = 0
        self.failed_reloads = 0
        self.last_problems: tuple[Problem, ...] = ()

    def reload(self) -> ReloadReport:
        started = time.perf_counter()
        result = self.source.load()
        change = self.store.apply(result)
        for key in change.kept:
            log.warning("%s: new version is invalid; keeping the last good one", key)
        changed = change.changed or self.translation is None
        problems = list(result.problems)
        if changed:
            snapshot = self.store.snapshot
            if self.cluster is None:
                options, allocations = self.options, self.allocations
            else:
                # from the API server: the cluster's objects are the record of what was allocated
                options, allocations = self.cluster.prepare(snapshot, self.options)
            translation = self.translator.translate(snapshot, options, allocations)
            problems.extend(place_diagnostics(translation.diagnostics, self.store.origin))
            if self.cluster is None:
                self._persist(translation.allocations)
                serving = translation
            else:
                self.cluster.translated(translation, snapshot, options, problems)
                serving = self.cluster.serving(translation, snapshot)
            # publish first: the publisher compares with self.translation, the version still serving
            self.publish(serving)
            self.translation = serving
        self.reloads += 1
        # each problem is logged when it appears, not again on every reload while it stays (from the API
        # server, reloads follow every endpoint change); /debug/problems lists them all
        reported = set(self.last_problems)
        self.last_problems = tuple(problems)
        for problem in (p for p in problems if p not in reported):
            level = logging.ERROR if problem.severity == "error" else logging.WARNING
            log.log(level, "%s", problem)
        return ReloadReport(self.store.version, changed, self.last_problems, time.perf_counter() - started)

    def _persist(self, allocations: Allocations) -> None:
        if allocations == self.allocations:
            return
        if self.state_file is not None:
            try:
                save_allocations(self.state_file, allocations)
            except StateError as error:
                # keep serving: the allocations stay in memory and the next change retries the write
                log.error("%s", error)
                return
        self.allocations = allocations

    def object_origin(self, key: ObjectKey) -> Origin | None:
        return self.store.origin(key)

    async def start(self) -> None:
        """Start the source and wait for its first complete view (the files: at once; the API server:
        every informer listed)."""
        await self.source.start()

    async def stop(self) -> None:
        await self.source.stop()

    async def watch(self, trigger: asyncio.Event) -> None:
        """Reload whenever the source changes or `trigger` is set (SIGHUP). Runs until cancelled."""
        follower = asyncio.create_task(self.source.follow(trigger))
        hold_off = self.source.coalesce_seconds
        try:
            while True:
                await trigger.wait()
                deadline = time.monotonic() + COALESCE_CAP_SECONDS
                trigger.clear()
                # coalesce: wait until the hold-off passes without a new signal, at most the cap
                while time.monotonic() < deadline:
                    try:
                        await asyncio.wait_for(trigger.wait(), hold_off)
                    except TimeoutError:
                        break
                    trigger.clear()
                try:
                    report = self.reload()
                except Exception:
                    # a bug must not stop reloading: the last published table keeps serving
                    self.failed_reloads += 1
                    log.exception("reload failed; the last good configuration keeps serving")
                    continue
                if report.changed:
                    log.info(
                        "configuration version %d published in %.1f ms", report.version, report.seconds * 1e3
                    )
        finally:
            follower.cancel()
