"""Access log: one line per request on stdout, text (combined-like) or JSON.

Lines are formatted on the request path but written in batches from a timer, so a slow terminal or pipe
never blocks a request, and a burst costs one write call instead of one per request.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import BinaryIO, Literal

import msgspec

from kubegate.planes.proxy.server import AccessRecord

Format = Literal["text", "json"]
FLUSH_SECONDS = 0.1
FLUSH_BYTES = 64 * 1024
# past this much unwritten log the oldest lines are dropped (and counted) rather than growing memory
MAX_PENDING_BYTES = 8 * 1024 * 1024


class AccessLogWriter:
    def __init__(self, fmt: Format = "text", stream: BinaryIO | None = None) -> None:
        self.format = fmt
        self.stream = stream if stream is not None else sys.stdout.buffer
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._encoder = msgspec.json.Encoder()
        self.dropped = 0
        # the timestamp text changes once a second: format it once a second, not once a request
        self._stamp_second = -1
        self._stamp = ""

    def __call__(self, record: AccessRecord) -> None:
        line = self._json(record) if self.format == "json" else self._text(record)
        if self._pending_bytes + len(line) > MAX_PENDING_BYTES:
            self.dropped += 1
            return
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):
            # stdout closed or full: losing log lines must not take the proxy down
            self.dropped += data.count(b"\n")

    def _text(self, record: AccessRecord) -> bytes:
        now = int(time.time())
        if now != self._stamp_second:
            self._stamp_second = now
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))
        return (
            f'{record.client} - - [{self._stamp}] "{record.method} {record.path}" '
            f"{record.status} {record.bytes} "
            f'host="{record.host}" upstream="{record.upstream or "-"}" '
            f"duration={record.duration * 1000:.2f}ms\n"
        ).encode("utf-8", "replace")

    def _json(self, record: AccessRecord) -> bytes:
        return (
            self._encoder.encode(
                {
                    "time": time.time(),
                    "client": record.client,
                    "method": record.method,
                    "path": record.path,
                    "host": record.host,
                    "status": record.status,
                    "bytes": record.bytes,
                    "duration_ms": round(record.duration * 1000, 3),
                    "upstream": record.upstream,
                }
            )
            + b"\n"
        )
