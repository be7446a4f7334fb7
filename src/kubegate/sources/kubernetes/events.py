"""Per-object problems as core/v1 Events, so ``kubectl describe ingress web`` shows what is wrong with it.

``EventRecorder.record(problems, snapshot)`` takes translate Diagnostics and load Problems. Each one that
names an object becomes a Warning Event on that object (involvedObject with kind, namespace, name, and
uid when the snapshot knows it), reason ``Invalid<Kind>`` for errors and ``<Kind>Warning`` for warnings,
and is logged once when first seen.

The same problem again (same object, reason and message) does not create another Event: like client-go's
event correlator, the recorder patches the existing Event's ``count`` and ``lastTimestamp``. Since the
reconciler reports every problem again on every translation, repeats are written at most once per
``repeat_interval`` per problem (the occurrences in between are added to the count), and writes are
bounded by token buckets per involved object (as client-go's spam filter) and overall. What the buckets
drop is still logged, and counted in ``dropped``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, NamedTuple

from lightkube import AsyncClient
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event
from lightkube.types import PatchType

from kubegate.objects.meta import ObjectKey
from kubegate.objects.snapshot import Snapshot
from kubegate.sources.files import Problem
from kubegate.sources.kubernetes.background import Latest
from kubegate.sources.kubernetes.status_writer import API_FAILURES, describe_failure, status_code
from kubegate.translate.context import Diagnostic

log = logging.getLogger("kubegate.kubernetes.events")

# Events for cluster-scoped objects (IngressClass) go to this namespace, as client-go does it.
CLUSTER_SCOPED_EVENT_NAMESPACE = "default"
# kubectl shows messages on one line; events.k8s.io caps its note at 1 kB, we do the same
MAX_MESSAGE_LENGTH = 1024
API_VERSIONS = {
    "Service": "v1",
    "Endpoints": "v1",
    "Pod": "v1",
    "Secret": "v1",
    "EndpointSlice": "discovery.k8s.io/v1",
    "Ingress": "networking.k8s.io/v1",
    "IngressClass": "networking.k8s.io/v1",
}


class _Key(NamedTuple):
    """What makes two problems the same Event (client-go's aggregation key, minus the source)."""

    kind: str
    namespace: str
    name: str
    uid: str
    reason: str
    message: str


@dataclass(slots=True)
class _Recorded:
    event_name: str
    event_namespace: str
    count: int
    written_at: float
    # occurrences since the last write, added to count on the next one
    pending: int = 0


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` a second."""

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self._burst = burst
        self._rate = rate
        self._tokens = burst
        self._at = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


@dataclass(slots=True)
class RecordReport:
    created: list[ObjectKey] = field(default_factory=list)
    updated: list[ObjectKey] = field(default_factory=list)
    # repeats held back until repeat_interval has passed
    deferred: int = 0
    # writes the rate limits refused
    dropped: int = 0
    failed: list[tuple[ObjectKey, str]] = field(default_factory=list)


Reportable = Diagnostic | Problem


def reason_for(kind: str, severity: Literal["error", "warning"]) -> str:
    return f"Invalid{kind}" if severity == "error" else f"{kind}Warning"


def _message(problem: Reportable) -> str:
    text = f"{problem.field}: {problem.message}" if problem.field else problem.message
    if len(text) > MAX_MESSAGE_LENGTH:
        text = text[: MAX_MESSAGE_LENGTH - 3] + "..."
    return text


def _uid(snapshot: Snapshot | None, key: ObjectKey) -> str:
    """The object's uid when the snapshot holds it: Events then stick to this incarnation of the object."""
    if snapshot is None:
        return ""
    found = snapshot.find(key)
    return found.metadata.uid if found is not None else ""


def _timestamp(moment: datetime) -> datetime:
    # Event timestamps are metav1.Time: whole seconds
    return moment.replace(microsecond=0)


class EventRecorder:
    """Records per-object problems as Events; see the module docstring for dedup and rate limits."""

    def __init__(
        self,
        client: AsyncClient,
        component: str = "kubegate",
        *,
        host: str | None = None,
        is_leader: Callable[[], bool] = lambda: True,
        log_problems: bool = True,
        repeat_interval: float = 60.0,
        object_burst: int = 25,
        object_refill_seconds: float = 300.0,
        total_burst: int = 100,
        total_per_second: float = 10.0,
        max_remembered: int = 4096,
        request_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self.component = component
        self.host = host if host is not None else socket.gethostname()
        self._is_leader = is_leader
        # off when the caller logs problems itself (the Reconciler does, as they appear)
        self._log_problems = log_problems
        self._repeat_interval = repeat_interval
        self._object_burst = object_burst
        self._object_rate = 1.0 / object_refill_seconds
        self._total = TokenBucket(total_burst, total_per_second, clock())
        self._max_remembered = max_remembered
        self._request_timeout = request_timeout
        self._clock = clock
        self._wall_clock = wall_clock
        self._recorded: OrderedDict[_Key, _Recorded] = OrderedDict()
        self._logged: OrderedDict[_Key, None] = OrderedDict()
        self._buckets: OrderedDict[ObjectKey, TokenBucket] = OrderedDict()
        self._pending: Latest[tuple[tuple[Reportable, ...], Snapshot | None]] = Latest()
        self.dropped = 0

    # ----------------------------------------------------------------------------------------------
    # Background use

    def submit(self, problems: Iterable[Reportable], snapshot: Snapshot | None = None) -> None:
        """Queue the problems of a translation for ``run()``; a newer batch replaces one not yet written."""
        self._pending.put((tuple(problems), snapshot))

    async def run(self) -> None:
        await self._pending.serve(lambda pending: self.record(*pending), "recording Events")

    # ----------------------------------------------------------------------------------------------
    # One batch

    async def record(self, problems: Iterable[Reportable], snapshot: Snapshot | None = None) -> RecordReport:
        """Log each problem that names an object the first time it is seen, and (when leader) write it as
        an Event. Never raises for API failures."""
        report = RecordReport()
        seen: set[_Key] = set()
        for problem in problems:
            obj = problem.object
            if obj is None or not obj.name:
                continue
            key = _Key(
                obj.kind,
                obj.namespace,
                obj.name,
                _uid(snapshot, obj),
                reason_for(obj.kind, problem.severity),
                _message(problem),
            )
            if key in seen:
                continue  # one occurrence per batch, however often a translation repeats it
            seen.add(key)
            self._log_once(key, problem)
            if self._is_leader():
                await self._write(key, obj, report)
        return report

    def _log_once(self, key: _Key, problem: Reportable) -> None:
        if not self._log_problems:
            return
        if key in self._logged:
            self._logged.move_to_end(key)
            return
        self._logged[key] = None
        if len(self._logged) > self._max_remembered:
            self._logged.popitem(last=False)
        level = logging.ERROR if problem.severity == "error" else logging.WARNING
        log.log(level, "%s", problem)

    def _allowed(self, obj: ObjectKey, now: float, report: RecordReport) -> bool:
        bucket = self._buckets.get(obj)
        if bucket is None:
            bucket = self._buckets[obj] = TokenBucket(self._object_burst, self._object_rate, now)
            if len(self._buckets) > self._max_remembered:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(obj)
        if bucket.take(now) and self._total.take(now):
            return True
        report.dropped += 1
        self.dropped += 1
        return False

    async def _write(self, key: _Key, obj: ObjectKey, report: RecordReport) -> None:
        now = self._clock()
        recorded = self._recorded.get(key)
        if recorded is not None:
            self._recorded.move_to_end(key)
            recorded.pending += 1
            if now - recorded.written_at < self._repeat_interval:
                report.deferred += 1
                return
            if not self._allowed(obj, now, report):
                return
            if await self._bump(key, obj, recorded, report):
                return
            # the Event is gone (Events expire after an hour): start a new one with the running count
        elif not self._allowed(obj, now, report):
            return
        count = recorded.count + recorded.pending if recorded is not None else 1
        await self._create(key, obj, count, report)

    async def _bump(self, key: _Key, obj: ObjectKey, recorded: _Recorded, report: RecordReport) -> bool:
        """Patch count and lastTimestamp; False when the Event no longer exists."""
        count = recorded.count + recorded.pending
        body = {
            "count": count,
            "lastTimestamp": _timestamp(self._wall_clock()).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        try:
            async with asyncio.timeout(self._request_timeout):
                await self._client.patch(
                    Event,
                    recorded.event_name,
                    body,
                    namespace=recorded.event_namespace,
                    patch_type=PatchType.MERGE,
                )
        except API_FAILURES as error:
            if status_code(error) == 404:
                return False
            report.failed.append((obj, describe_failure(error)))
            log.debug("cannot update the Event for %s: %s", obj, describe_failure(error))
            return True
        recorded.count = count
        recorded.pending = 0
        recorded.written_at = self._clock()
        report.updated.append(obj)
        return True

    async def _create(self, key: _Key, obj: ObjectKey, count: int, report: RecordReport) -> None:
        now = _timestamp(self._wall_clock())
        namespace = obj.namespace or CLUSTER_SCOPED_EVENT_NAMESPACE
        # client-go names Events <object>.<unique hex>; the time in ns is unique enough per object
        name = f"{obj.name}.{time.time_ns():x}"
        event = Event(
            metadata=ObjectMeta(name=name, namespace=namespace),
            involvedObject=ObjectReference(
                kind=obj.kind,
                apiVersion=API_VERSIONS.get(obj.kind),
                namespace=obj.namespace or None,
                name=obj.name,
                uid=key.uid or None,
            ),
            reason=key.reason,
            message=key.message,
            type="Warning",
            count=count,
            firstTimestamp=now,
            lastTimestamp=now,
            source=EventSource(component=self.component, host=self.host),
            reportingComponent=self.component,
            reportingInstance=self.host,
        )
        try:
            async with asyncio.timeout(self._request_timeout):
                await self._client.create(event)
        except API_FAILURES as error:
            report.failed.append((obj, describe_failure(error)))
            log.warning("cannot record an Event for %s: %s", obj, describe_failure(error))
            return
        self._recorded[key] = _Recorded(name, namespace, count, self._clock())
        self._recorded.move_to_end(key)
        if len(self._recorded) > self._max_remembered:
            self._recorded.popitem(last=False)
        report.created.append(obj)
