"""Loopback helpers: a raw HTTP client, backends, and a proxy in front of them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httptools

from kubegate.echo import start_echo
from kubegate.ir.model import Backend, Endpoint, EndpointTable, Route, RouteOptions, RoutingTable, VirtualHost
from kubegate.planes.proxy.http import ProxySettings
from kubegate.planes.proxy.server import AccessRecord, ProxyServer


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    done: bool = False

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(bytes(self.body))


class _Collector:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.current = Response()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.current.body += body

    def on_message_complete(self) -> None:
        self.current.done = True
        self.responses.append(self.current)
        self.current = Response()


class Client:
    """A raw HTTP/1.1 client over one connection: send bytes, read whole responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._collector = _Collector()
        self._parser = httptools.HttpResponseParser(self._collector)
        self._head = False

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self, timeout: float = 10.0, head: bool = False) -> Response:
        async with asyncio.timeout(timeout):
            while not self._collector.responses:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("connection closed before a full response")
                with suppress(httptools.HttpParserError):
                    self._parser.feed_data(data)
                c = self._collector
                if head and c.current.headers and not c.responses:
                    c.current.status = self._parser.get_status_code()
                    return c.current
                if c.responses and not c.responses[0].status:
                    c.responses[0].status = self._parser.get_status_code()
            resp = self._collector.responses.pop(0)
            if not resp.status:
                resp.status = self._parser.get_status_code()
            return resp

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection (reads until EOF)."""
        async with asyncio.timeout(timeout):
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return True

    async def close(self) -> None:
        self.writer.close()
        with suppress(OSError):
            await self.writer.wait_closed()


def get(path: str, host: str = "example.com", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def table_for(routes: dict[str, tuple[Route, ...]], default: str | None = None) -> RoutingTable:
    return RoutingTable(
        virtual_hosts=tuple(VirtualHost(host=h, routes=r) for h, r in routes.items()),
        default_backend=Backend(cluster=default) if default else None,
    )


def prefix(path: str, cluster: str, **options: Any) -> Route:
    return Route(
        match="Prefix", path=path, backends=(Backend(cluster=cluster),), options=RouteOptions(**options)
    )


def port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


@asynccontextmanager
async def echo_backends(*names: str) -> AsyncIterator[dict[str, int]]:
    servers = [await start_echo(n, "127.0.0.1", 0) for n in names]
    try:
        yield {n: port_of(s) for n, s in zip(names, servers, strict=True)}
    finally:
        for s in servers:
            s.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_backend(handler: Handler) -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A backend driven by a stream handler; yields its port and the writers of its connections."""
    conns: list[asyncio.StreamWriter] = []

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    try:
        yield port_of(server), conns
    finally:
        server.close()


@asynccontextmanager
async def proxy(
    routing: RoutingTable,
    endpoints: dict[str, list[int]] | EndpointTable,
    settings: ProxySettings | None = None,
    log: list[AccessRecord] | None = None,
) -> AsyncIterator[tuple[ProxyServer, int]]:
    table = (
        endpoints
        if isinstance(endpoints, EndpointTable)
        else EndpointTable(
            clusters={
                c: tuple(Endpoint(ip="127.0.0.1", port=p) for p in ports) for c, ports in endpoints.items()
            }
        )
    )
    server = ProxyServer(routing, table, settings, access_log=log.append if log is not None else None)
    _, port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.close(drain_timeout=1.0)
        assert not server.errors, server.errors
