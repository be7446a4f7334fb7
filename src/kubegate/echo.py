"""An echo backend: answers every request with JSON describing it.

``{"name", "method", "path", "query", "headers", "body_size"}``. The body is counted and discarded as
it arrives, so uploads of any size work with constant memory. Keep-alive and pipelining are supported
(responses go out in request order because each is written when its request completes).
Used by the proxy tests and by ``kubegate echo``.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools
import msgspec

_encode = msgspec.json.Encoder().encode


class EchoProtocol(asyncio.Protocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._respond()
        except httptools.HttpParserError as exc:
            if self.transport is not None:
                body = f"bad request: {exc}\n".encode()
                self.transport.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%b"
                    % (len(body), body)
                )
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.transport is None:
            return
        for name, value in self.headers:
            if name.lower() == "expect" and value.lower() == "100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)

    def on_message_complete(self) -> None:
        self._respond()

    def _respond(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        url = self.url.decode("latin-1")
        path, _, query = url.partition("?")
        method = self.parser.get_method().decode("ascii", "replace")
        body = _encode(
            {
                "name": self.name,
                "method": method,
                "path": path,
                "query": query,
                "headers": self.headers,
                "body_size": self.body_size,
            }
        )
        keep_alive = self.parser.should_keep_alive()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%b\r\n" % (
            len(body),
            b"" if keep_alive else b"Connection: close\r\n",
        )
        self.transport.write(head if method == "HEAD" else head + body)
        if not keep_alive:
            self.transport.close()


async def start_echo(name: str, host: str, port: int) -> asyncio.Server:
    """Start listening and return the server (its sockets tell the bound port)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: EchoProtocol(name), host, port)


async def serve_echo(name: str, host: str, port: int) -> None:
    """Serve until cancelled."""
    server = await start_echo(name, host, port)
    async with server:
        await server.serve_forever()
