"""A tiny blocking HTTP client for the fake API server's tests: JSON in, (status, JSON) out, and watches."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any


def call(
    base: str, method: str, path: str, body: Any = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(
        base + path, method=method, data=data, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@dataclass
class WatchReader:
    """Reads a watch stream in a thread; ``events`` fills as lines arrive, ``ended`` when the stream ends."""

    base: str
    path: str
    events: list[dict[str, Any]] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> WatchReader:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            with urllib.request.urlopen(self.base + self.path, timeout=10) as response:
                for line in response:
                    with self.arrived:
                        self.events.append(json.loads(line))
                        self.arrived.notify_all()
        except Exception as error:  # the tests assert on how the stream ended
            self.error = error
        finally:
            self.ended.set()
            with self.arrived:
                self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Events once at least ``count`` non-bookmark events arrived (or the stream ended / timed out)."""
        with self.arrived:
            self.arrived.wait_for(
                lambda: len(self.changes()) >= count or self.ended.is_set(), timeout=timeout
            )
            return self.changes()

    def changes(self) -> list[dict[str, Any]]:
        return [event for event in list(self.events) if event["type"] != "BOOKMARK"]

    def summary(self) -> list[tuple[str, str]]:
        return [(e["type"], e["object"].get("metadata", {}).get("name", "")) for e in self.changes()]
