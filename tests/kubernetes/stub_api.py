"""A small in-process list/watch API for the informer's unit tests, served through httpx2.MockTransport.

Only what the informer's protocol needs, with the API server's rules: one integer resourceVersion
counter over all objects, paged lists, watches that replay history after a version and then stream
live, 410 Gone for versions older than the compacted history (as the HTTP status when the watch is
opened, or as an ERROR event on open streams), bookmarks, and streams that can be cut. The scenario
tests use the full fake in tests/fakes instead.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import msgspec

_PATH = re.compile(r"^/(?:api/v1|apis/[^/]+/v1)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)$")
_CLUSTER_SCOPED = {"ingressclasses"}


@dataclass
class _Stream:
    plural: str
    namespace: str | None
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}  # fmt: skip


class StubApi:
    def __init__(self) -> None:
        self.version = 100
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        # (version, plural, namespace, event)
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []
        self.oldest = 0  # versions below this are compacted away
        self.streams: list[_Stream] = []
        self.requests: list[httpx2.Request] = []
        # answer the next N requests with HTTP 500
        self.fail_next = 0
        # a broken server: every watch is answered 410, however fresh its version
        self.always_expire = False
        # a broken proxy: every watch stream ends as soon as it starts
        self.end_watches_at_once = False
        # cleared: new watch requests wait, so a test can change objects while no watch is open
        self.watch_gate = asyncio.Event()
        self.watch_gate.set()
        self.transport = httpx2.MockTransport(self.handle)

    # ----------------------------------------------------------------------------------------------
    # changing objects

    def _record(self, kind: str, plural: str, obj: dict[str, Any]) -> None:
        namespace = obj["metadata"].get("namespace", "")
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self.history.append((self.version, plural, namespace, event))
        for stream in self.streams:
            if stream.plural == plural and stream.namespace in (None, namespace):
                stream.queue.put_nowait(event)

    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace; returns the stored object with its new resourceVersion."""
        stored = copy.deepcopy(obj)
        metadata = stored.setdefault("metadata", {})
        if plural in _CLUSTER_SCOPED:
            metadata.pop("namespace", None)
        else:
            metadata.setdefault("namespace", "default")
        key = (plural, metadata.get("namespace", ""), metadata["name"])
        self.version += 1
        metadata["resourceVersion"] = str(self.version)
        existed = key in self.objects
        self.objects[key] = stored
        self._record("MODIFIED" if existed else "ADDED", plural, stored)
        return stored

    def delete(self, plural: str, namespace: str, name: str) -> None:
        stored = self.objects.pop((plural, namespace, name))
        self.version += 1
        stored = copy.deepcopy(stored)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self._record("DELETED", plural, stored)

    def compact(self) -> None:
        """Forget all history: any watch from an older version now gets 410."""
        self.oldest = self.version + 1
        self.history.clear()

    def drop_watches(self) -> None:
        for stream in self.streams:
            stream.queue.put_nowait(None)

    def expire_watches(self) -> None:
        """Send the mid-stream 410 ERROR event a compaction causes, then end the streams."""
        for stream in self.streams:
            stream.queue.put_nowait({"type": "ERROR", "object": _status(410, "Expired", "too old")})
            stream.queue.put_nowait(None)

    def error_event(self, code: int, message: str) -> None:
        """An ERROR event other than 410 (the server failing mid-stream), then the end of the streams."""
        for stream in self.streams:
            stream.queue.put_nowait({"type": "ERROR", "object": _status(code, "InternalError", message)})
            stream.queue.put_nowait(None)

    def bookmark(self) -> None:
        self.version += 1
        for stream in self.streams:
            event = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": str(self.version)}}}
            stream.queue.put_nowait(event)

    # ----------------------------------------------------------------------------------------------
    # serving

    def watch_params(self) -> list[dict[str, str]]:
        return [dict(r.url.params) for r in self.requests if r.url.params.get("watch") == "1"]

    def list_params(self) -> list[dict[str, str]]:
        return [dict(r.url.params) for r in self.requests if r.url.params.get("watch") != "1"]

    async def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if self.fail_next:
            self.fail_next -= 1
            return httpx2.Response(500, json=_status(500, "InternalError", "try later"))
        match = _PATH.match(request.url.path)
        if match is None:
            return httpx2.Response(404, json=_status(404, "NotFound", request.url.path))
        plural, namespace = match["plural"], match["ns"]
        if request.url.params.get("watch") == "1":
            await self.watch_gate.wait()
            return self._watch(plural, namespace, request)
        return self._list(plural, namespace, request)

    def _list(self, plural: str, namespace: str | None, request: httpx2.Request) -> httpx2.Response:
        items = [
            copy.deepcopy(obj)
            for (p, ns, _), obj in sorted(self.objects.items())
            if p == plural and namespace in (None, ns)
        ]
        for item in items:
            # a typed list's items carry no apiVersion/kind
            item.pop("apiVersion", None)
            item.pop("kind", None)
        limit = int(request.url.params.get("limit", "0") or 0)
        start = int(request.url.params.get("continue", "0") or 0)
        page = items[start : start + limit] if limit else items[start:]
        metadata: dict[str, Any] = {"resourceVersion": str(self.version)}
        if limit and start + limit < len(items):
            metadata["continue"] = str(start + limit)
        return httpx2.Response(
            200, json={"kind": "List", "apiVersion": "v1", "metadata": metadata, "items": page}
        )

    def _watch(self, plural: str, namespace: str | None, request: httpx2.Request) -> httpx2.Response:
        since = int(request.url.params.get("resourceVersion") or self.version)
        if since < self.oldest - 1 or self.always_expire:
            return httpx2.Response(410, json=_status(410, "Expired", f"too old resource version: {since}"))
        stream = _Stream(plural, namespace)
        if self.end_watches_at_once:
            stream.queue.put_nowait(None)
        for version, p, ns, event in self.history:
            if version > since and p == plural and namespace in (None, ns):
                stream.queue.put_nowait(event)
        self.streams.append(stream)

        async def body() -> AsyncIterator[bytes]:
            try:
                while True:
                    event = await stream.queue.get()
                    if event is None:
                        return
                    yield msgspec.json.encode(event) + b"\n"
            finally:
                self.streams.remove(stream)

        return httpx2.Response(200, content=body())
