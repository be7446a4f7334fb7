"""One watch, streamed: newline-delimited JSON events in HTTP chunks, as kube-apiserver sends them.

Replays what the watch must see first (synthetic ADDED events or the changes after a resourceVersion),
then follows the watch's queue. Along the way: BOOKMARK events when asked for (only when everything queued
has been sent, so a bookmark never claims a version whose events are still pending), the
``k8s.io/initial-events-end`` bookmark for ``sendInitialEvents``, ``timeoutSeconds``, a 410 ERROR event
when the start is too old or the server expires the watch, and a periodic check that the client is still
there so an abandoned stream frees its thread.
"""

from __future__ import annotations

import io
import json
import queue
import select
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tests.fakes import errors, tables
from tests.fakes.cluster import Cluster, EndStream, ExpireStream, Watch, WatchEvent
from tests.fakes.errors import ApiError

# How often an idle watch checks that its client is still there.
LIVENESS_POLL = 0.25


def parse_count(value: str, what: str) -> int:
    if not value.isdigit():
        raise errors.bad_request(f"invalid {what} {value!r}: expected a non-negative integer")
    return int(value)


@dataclass(frozen=True, slots=True)
class WatchOptions:
    since: int | None  # None: begin with synthetic ADDED events for what exists now
    initial_events: bool
    bookmarks: bool
    bookmark_interval: float
    timeout: float | None
    as_table: bool
    include_object: str

    @classmethod
    def from_query(cls, query: dict[str, str], bookmark_interval: float, as_table: bool) -> WatchOptions:
        """The watch's query parameters; a malformed one is a 400 before the stream starts."""
        version = query.get("resourceVersion", "")
        initial_events = query.get("sendInitialEvents") == "true"
        since = None if version in ("", "0") or initial_events else parse_count(version, "resourceVersion")
        timeout = query.get("timeoutSeconds")
        return cls(
            since=since,
            initial_events=initial_events,
            bookmarks=query.get("allowWatchBookmarks") == "true",
            bookmark_interval=bookmark_interval,
            timeout=float(parse_count(timeout, "timeoutSeconds")) if timeout else None,
            as_table=as_table,
            include_object=query.get("includeObject", ""),
        )


class WatchStream:
    def __init__(
        self,
        out: io.BufferedIOBase,
        connection: socket.socket,
        cluster: Cluster,
        watch: Watch,
        options: WatchOptions,
    ) -> None:
        self.out = out
        self.connection = connection
        self.cluster = cluster
        self.watch = watch
        self.options = options
        self.last_version = 0

    def run(self, begin: Callable[[], None]) -> bool:
        """Stream until the watch ends; ``begin`` sends the response head once the watch is accepted.

        Returns True when the stream ended cleanly (the caller sends the final chunk) and False when the
        connection must be cut (the client left, a write failed, or the server dropped it abruptly).
        Errors other than 410 raise ApiError before anything is sent.
        """
        try:
            replay = self.cluster.open_watch(self.watch, self.options.since)
        except ApiError as error:
            if error.code != 410:
                raise
            begin()  # kube answers an expired watch with 200 and a single ERROR event
            self._write({"type": "ERROR", "object": error.status()})
            return True
        begin()
        try:
            return self._follow(replay)
        except OSError:
            return False
        finally:
            self.cluster.close_watch(self.watch)

    def _follow(self, replay: Iterator[WatchEvent]) -> bool:
        options = self.options
        started = time.monotonic()
        deadline = started + options.timeout if options.timeout is not None else None
        next_bookmark = started + options.bookmark_interval
        self.last_version = options.since if options.since is not None else self.cluster.resource_version
        for event in replay:
            self._send_event(event)
        if options.initial_events:
            self._bookmark(self.last_version, {"k8s.io/initial-events-end": "true"})
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return True
            wait = LIVENESS_POLL
            if deadline is not None:
                wait = min(wait, deadline - now)
            if options.bookmarks:
                wait = min(wait, max(0.0, next_bookmark - now))
            try:
                item = self.watch.queue.get(timeout=max(wait, 0.001))
            except queue.Empty:
                if self._client_gone():
                    return False
                if options.bookmarks and time.monotonic() >= next_bookmark:
                    current = self.cluster.bookmark_version(self.watch)
                    if current is not None:
                        self._bookmark(current)
                    next_bookmark = time.monotonic() + options.bookmark_interval
                continue
            if isinstance(item, WatchEvent):
                self._send_event(item)
            elif isinstance(item, ExpireStream):
                expired = errors.expired(self.last_version, self.cluster.resource_version)
                self._write({"type": "ERROR", "object": expired.status()})
                return True
            elif isinstance(item, EndStream):
                return not item.abrupt

    def _send_event(self, event: WatchEvent) -> None:
        obj = event.object
        if self.options.as_table:
            version = {"resourceVersion": obj["metadata"]["resourceVersion"]}
            obj = tables.table(obj["kind"], [obj], version, self.options.include_object)
        self._write({"type": event.type, "object": obj})
        self.last_version = event.resource_version

    def _bookmark(self, version: int, annotations: dict[str, str] | None = None) -> None:
        metadata: dict[str, Any] = {"resourceVersion": str(version)}
        if annotations:
            metadata["annotations"] = annotations
        resource = self.watch.resource
        self._write(
            {
                "type": "BOOKMARK",
                "object": {"kind": resource.kind, "apiVersion": resource.api_version, "metadata": metadata},
            }
        )
        self.last_version = version

    def _write(self, event: dict[str, Any]) -> None:
        data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        self.out.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        """True when the client closed its end (readable with nothing to read)."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
        except OSError:
            return True
