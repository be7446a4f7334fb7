"""The admin listener: /healthz, /readyz, /metrics and /debug/..., on its own port (localhost by default).

Kept apart from the data plane so that a flood of proxied traffic cannot starve health checks, and so the
debug endpoints are never reachable from the outside by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

import httptools

log = logging.getLogger(__name__)

# A handler returns (status, content type, body).
Response = tuple[int, str, bytes]
Handler = Callable[[], Response | Awaitable[Response]]

_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    400: "Bad Request",
    503: "Service Unavailable",
}
_MAX_REQUEST_BYTES = 16 * 1024
_READ_TIMEOUT = 10.0


class _Request:
    """Collects the URL of one request as httptools parses it."""

    def __init__(self) -> None:
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        self.complete = True


def _encode(status: int, content_type: str, body: bytes, head: bool) -> bytes:
    header = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Server: kubegate\r\nConnection: close\r\n\r\n"
    ).encode()
    return header if head else header + body


class AdminServer:
    def __init__(self, routes: Mapping[str, Handler]) -> None:
        self._routes = dict(routes)
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = _Request()
            parser = httptools.HttpRequestParser(request)
            received = 0
            while not request.complete:
                chunk = await asyncio.wait_for(reader.read(4096), _READ_TIMEOUT)
                if not chunk:
                    return
                received += len(chunk)
                if received > _MAX_REQUEST_BYTES:
                    writer.write(_encode(400, "text/plain", b"request too large\n", False))
                    return
                parser.feed_data(chunk)
            method = parser.get_method()
            writer.write(await self._respond(method, request.url))
            await writer.drain()
        except (httptools.HttpParserError, ValueError):
            writer.write(_encode(400, "text/plain", b"malformed request\n", False))
        except (TimeoutError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(ConnectionError):
                writer.close()

    async def _respond(self, method: bytes, url: bytes) -> bytes:
        head = method == b"HEAD"
        if method not in (b"GET", b"HEAD"):
            return _encode(405, "text/plain", b"only GET and HEAD\n", head)
        path = httptools.parse_url(url).path.decode("latin-1")
        handler = self._routes.get(path)
        if handler is None:
            listing = "".join(f"{name}\n" for name in sorted(self._routes)).encode()
            return _encode(404, "text/plain", b"not found; try:\n" + listing, head)
        try:
            outcome = handler()
            status, content_type, body = await outcome if isinstance(outcome, Awaitable) else outcome
        except Exception:
            # a broken debug handler must not take the admin listener down with it
            log.exception("admin handler %s failed", path)
            return _encode(503, "text/plain", b"handler failed; see the log\n", head)
        return _encode(status, content_type, body, head)
