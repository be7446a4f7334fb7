"""One kind's objects from the API server, kept current: list, then watch from the list's resourceVersion.

The protocol (Kubernetes API concepts, "Efficient detection of changes"):

- A list returns the collection and the resourceVersion it was read at; a watch from that version
  replays every change after it. Lists are paged (``limit``/``continue``).
- A watch that ends (the server's ``timeoutSeconds``, a dropped connection) is reopened from the last
  resourceVersion seen, including the ones carried by BOOKMARK events, so nothing is missed or replayed.
- When that version is too old (compacted history), the server answers 410 Gone, either as the HTTP
  status of the watch request or as an ERROR event inside the stream. Changes in the gap are lost, so
  the informer lists again and diffs the new list against its cache: objects missing from it are
  reported as deleted, objects whose resourceVersion differs as updated.
- Other failures (connection refused, 5xx, garbage on the stream) are retried with exponential back-off
  and jitter, so a restarting API server is not stampeded by every informer at once.

We speak HTTP on an httpx2 session rather than use lightkube's ``watch``: on 410 it silently rewatches
from "now" without relisting (the deletions in the gap are never seen), and it decodes every event into
its own models while we want our own decoding, once per changed object.

Each object is decoded when it changes, never again: an unchanged resourceVersion on relist keeps the
cached entry. A bad object becomes a Problem naming kind/namespace/name and field; it never stops the
informer or touches other objects.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import msgspec

from kubegate.objects.decode import DecodeError, UnknownKind, check_object
from kubegate.objects.kinds import LEGACY_CLASS_ANNOTATION, KubeObject
from kubegate.objects.meta import ObjectKey, Origin
from kubegate.objects.validate import warnings
from kubegate.sources.files import Problem

log = logging.getLogger("kubegate.kubernetes")

SOURCE = "kubernetes"
ORIGIN = Origin(SOURCE, 0, 0)
LIST_PAGE_SIZE = 500
# the server ends each watch after this long (client-go picks 5-10 minutes at random); we reopen it
WATCH_TIMEOUT_SECONDS = 300
# a watch that sends nothing (not even a bookmark) for this much longer than its timeout is dead
WATCH_READ_MARGIN_SECONDS = 30.0
# a watch ending sooner than this, having delivered nothing, counts as a failure
QUICK_WATCH_END_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Resource:
    """How one kind is addressed on the API server."""

    kind: str
    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace is not None:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"


RESOURCES: tuple[Resource, ...] = (
    Resource("Service", "v1", "services"),
    Resource("Endpoints", "v1", "endpoints"),
    Resource("EndpointSlice", "discovery.k8s.io/v1", "endpointslices"),
    Resource("Pod", "v1", "pods"),
    Resource("Ingress", "networking.k8s.io/v1", "ingresses"),
    Resource("IngressClass", "networking.k8s.io/v1", "ingressclasses", namespaced=False),
    Resource("Secret", "v1", "secrets"),
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One object as the informer holds it: decoded, or the problems that kept it from decoding."""

    key: ObjectKey
    resource_version: str
    object: KubeObject | None
    # errors (then object is None) or warnings (object is set)
    problems: tuple[Problem, ...] = ()
    # an Ingress's class as written (spec.ingressClassName, else the legacy annotation), read from the raw
    # object so that even one that fails to decode can be recognised as another controller's
    ingress_class: str | None = None


# called with the key and the new entry, or None when the object is gone
OnChange = Callable[[ObjectKey, Entry | None], None]


class Expired(Exception):
    """410 Gone: the resourceVersion asked for is older than the server's history."""


class ApiFailure(Exception):
    """Any other failed request or broken stream: retried after a back-off."""


@dataclass(slots=True)
class Backoff:
    """Exponential back-off with jitter: each failure doubles the delay up to ``maximum``; a success resets
    it. The delay is drawn from [delay/2, delay] so informers failing together retry apart."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    failures: int = 0

    def next_delay(self, rng: random.Random) -> float:
        delay = min(self.maximum, self.initial * self.factor**self.failures)
        self.failures += 1
        return delay * (0.5 + rng.random() / 2)

    def reset(self) -> None:
        self.failures = 0


def _metadata(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = raw.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def raw_key(resource: Resource, raw: Mapping[str, Any]) -> ObjectKey:
    metadata = _metadata(raw)
    name = metadata.get("name")
    namespace = metadata.get("namespace") if resource.namespaced else ""
    return ObjectKey(
        resource.kind,
        namespace if isinstance(namespace, str) else "",
        name if isinstance(name, str) else "",
    )


def _resource_version(raw: Mapping[str, Any]) -> str:
    version = _metadata(raw).get("resourceVersion")
    return version if isinstance(version, str) else ""


def _ingress_class(raw: Mapping[str, Any]) -> str | None:
    spec = raw.get("spec")
    name = spec.get("ingressClassName") if isinstance(spec, dict) else None
    if isinstance(name, str) and name:
        return name
    annotations = _metadata(raw).get("annotations")
    legacy = annotations.get(LEGACY_CLASS_ANNOTATION) if isinstance(annotations, dict) else None
    return legacy if isinstance(legacy, str) else None


def decode_entry(resource: Resource, raw: Mapping[str, Any]) -> Entry:
    """Decode one object from the API; never raises. List items lack apiVersion/kind: they are filled in."""
    document = dict(raw)
    document.setdefault("apiVersion", resource.api_version)
    document.setdefault("kind", resource.kind)
    key = raw_key(resource, document)
    version = _resource_version(document)
    class_name = _ingress_class(document) if resource.kind == "Ingress" else None
    problems: tuple[Problem, ...]
    try:
        obj, errors = check_object(document)
    except UnknownKind as unknown:
        problems = (Problem(ORIGIN, key, "", str(unknown)),)
        return Entry(key, version, None, problems, class_name)
    except DecodeError as error:
        problems = (Problem(ORIGIN, key, error.field, error.message),)
        return Entry(key, version, None, problems, class_name)
    if errors:
        problems = tuple(Problem(ORIGIN, key, e.field, e.message) for e in errors)
        return Entry(key, version, None, problems, class_name)
    found = tuple(Problem(ORIGIN, key, w.field, w.message, "warning") for w in warnings(obj))
    return Entry(key, version, obj, found, class_name)


class Informer:
    """Keeps ``cache`` equal to the API server's objects of one kind, calling ``on_change`` for every
    difference. ``run()`` never returns (cancel it); ``synced`` is set once the first list is in."""

    def __init__(
        self,
        http: httpx2.AsyncClient,
        resource: Resource,
        on_change: OnChange,
        *,
        namespace: str | None = None,
        backoff: Backoff | None = None,
        watch_timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self.http = http
        self.resource = resource
        self.namespace = namespace if resource.namespaced else None
        self.on_change = on_change
        self.backoff = backoff if backoff is not None else Backoff()
        self.watch_timeout_seconds = watch_timeout_seconds
        self.rng = rng if rng is not None else random.Random()
        self.cache: dict[ObjectKey, Entry] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        # counters, for tests and metrics
        self.lists = 0
        self.watches = 0
        self.expirations = 0
        self.failures = 0
        self.last_error = ""
        # events received on the current (or last) watch stream
        self._events_in_stream = 0
        self._expired_without_events = False

    @property
    def path(self) -> str:
        return self.resource.path(self.namespace)

    def __str__(self) -> str:
        scope = f" in namespace {self.namespace}" if self.namespace is not None else ""
        return f"{self.resource.kind} informer{scope}"

    async def run(self) -> None:
        must_list = True
        while True:
            try:
                if must_list:
                    await self.relist()
                    must_list = False
                opened = time.monotonic()
                await self.watch_once()
                if not self._events_in_stream and time.monotonic() - opened < QUICK_WATCH_END_SECONDS:
                    # the server (or a proxy before it) ends watches at once: do not reconnect in a loop
                    await self._back_off("the watch ended at once, without an event")
            except Expired:
                self.expirations += 1
                log.info("%s: resourceVersion %s expired; listing again", self, self.resource_version)
                must_list = True
                if not self._events_in_stream and self._expired_without_events:
                    # expired again straight after a fresh list: do not hammer the server with lists
                    await self._back_off(f"resourceVersion {self.resource_version} expired again")
                self._expired_without_events = not self._events_in_stream
            except ApiFailure as error:
                if self._events_in_stream:
                    # a stream that was delivering broke (dropped connection): resume at once; only
                    # failing again without an event backs off
                    self.failures += 1
                    self.last_error = str(error)
                    log.info("%s: %s; resuming from %s", self, error, self.resource_version)
                    continue
                await self._back_off(str(error))
            except Exception as error:
                # a bug (or an error type we did not foresee) must not stop this kind from being watched
                log.exception("%s: unexpected failure", self)
                must_list = True
                await self._back_off(f"unexpected {type(error).__name__}: {error}")

    async def _back_off(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        delay = self.backoff.next_delay(self.rng)
        log.warning("%s: %s; retrying in %.1f s", self, error, delay)
        await asyncio.sleep(delay)

    # ----------------------------------------------------------------------------------------------
    # list

    async def _get_json(self, params: dict[str, str]) -> dict[str, Any]:
        try:
            response = await self.http.get(self.path, params=params)
        except httpx2.HTTPError as error:
            raise ApiFailure(f"list {self.path}: {_describe_http_error(error)}") from None
        if response.status_code == 410:
            raise Expired()
        if response.status_code != 200:
            raise ApiFailure(f"list {self.path}: HTTP {response.status_code} {_status_message(response)}")
        try:
            document = msgspec.json.decode(response.content)
        except msgspec.DecodeError as error:
            raise ApiFailure(f"list {self.path}: response is not JSON: {error}") from None
        if not isinstance(document, dict) or not isinstance(document.get("items", []), list | None):
            raise ApiFailure(f"list {self.path}: response is not a list")
        return document

    async def relist(self) -> None:
        """List every object (page by page), then make the cache equal to the list."""
        # a failure from here on is not a delivering stream that broke: it backs off
        self._events_in_stream = 0
        items: list[Any] = []
        params = {"limit": str(LIST_PAGE_SIZE)}
        while True:
            # a continue token that expired mid-list also answers 410: the whole list starts over
            document = await self._get_json(params)
            items.extend(document.get("items") or ())
            metadata = document.get("metadata")
            metadata = metadata if isinstance(metadata, dict) else {}
            token = metadata.get("continue")
            if not token:
                version = metadata.get("resourceVersion")
                break
            params = {"limit": str(LIST_PAGE_SIZE), "continue": str(token)}
        self.lists += 1
        self._replace_all(items)
        self.resource_version = version if isinstance(version, str) else ""
        self.backoff.reset()
        self.synced.set()

    def _replace_all(self, items: list[Any]) -> None:
        seen: set[ObjectKey] = set()
        for raw in items:
            if not isinstance(raw, dict):
                continue
            key = raw_key(self.resource, raw)
            seen.add(key)
            cached = self.cache.get(key)
            if cached is not None and cached.resource_version == _resource_version(raw):
                continue  # unchanged since we last decoded it
            self._store(decode_entry(self.resource, raw))
        for key in [key for key in self.cache if key not in seen]:
            # deleted while we were not watching (or in a compacted gap)
            self._delete(key)

    def _store(self, entry: Entry) -> None:
        self.cache[entry.key] = entry
        self.on_change(entry.key, entry)

    def _delete(self, key: ObjectKey) -> None:
        if self.cache.pop(key, None) is not None:
            self.on_change(key, None)

    # ----------------------------------------------------------------------------------------------
    # watch

    async def watch_once(self) -> None:
        """One watch request from ``resource_version``; returns when the server ends it normally."""
        params = {
            "watch": "1",
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout_seconds),
        }
        timeout = httpx2.Timeout(10.0, read=self.watch_timeout_seconds + WATCH_READ_MARGIN_SECONDS)
        request = self.http.build_request("GET", self.path, params=params, timeout=timeout)
        self._events_in_stream = 0
        try:
            response = await self.http.send(request, stream=True)
        except httpx2.HTTPError as error:
            raise ApiFailure(f"watch {self.path}: {_describe_http_error(error)}") from None
        self.watches += 1
        try:
            if response.status_code == 410:
                raise Expired()
            if response.status_code != 200:
                await response.aread()
                raise ApiFailure(
                    f"watch {self.path}: HTTP {response.status_code} {_status_message(response)}"
                )
            self.backoff.reset()
            async for event in self._events(response):
                self._apply(event)
                # counted after: a stream whose first event is an ERROR did not deliver
                self._events_in_stream += 1
        finally:
            await response.aclose()

    async def _events(self, response: httpx2.Response) -> AsyncIterator[dict[str, Any]]:
        try:
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                try:
                    event = msgspec.json.decode(line)
                except msgspec.DecodeError as error:
                    raise ApiFailure(f"watch {self.path}: event is not JSON: {error}") from None
                if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                    raise ApiFailure(f"watch {self.path}: malformed event")
                yield event
        except httpx2.HTTPError as error:
            # the connection dropped mid-stream: resume from the last version seen
            raise ApiFailure(f"watch {self.path}: {_describe_http_error(error)}") from None

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        raw: dict[str, Any] = event["object"]
        if kind == "ERROR":
            code = raw.get("code")
            if code == 410:
                raise Expired()
            raise ApiFailure(f"watch {self.path}: error event {code}: {raw.get('message', '')}")
        version = _resource_version(raw)
        if kind == "BOOKMARK":
            if version:
                self.resource_version = version
            return
        key = raw_key(self.resource, raw)
        if kind in ("ADDED", "MODIFIED"):
            cached = self.cache.get(key)
            if cached is None or cached.resource_version != version or not version:
                self._store(decode_entry(self.resource, raw))
        elif kind == "DELETED":
            self._delete(key)
        else:
            raise ApiFailure(f"watch {self.path}: unknown event type {kind!r}")
        if version:
            self.resource_version = version


def _describe_http_error(error: httpx2.HTTPError) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _status_message(response: httpx2.Response) -> str:
    """The message of a metav1.Status body, if the response carries one."""
    try:
        document = msgspec.json.decode(response.content)
    except (msgspec.DecodeError, httpx2.ResponseNotRead):
        return ""
    message = document.get("message") if isinstance(document, dict) else None
    return f"({message})" if isinstance(message, str) and message else ""
