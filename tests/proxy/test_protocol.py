"""The client-side protocol without sockets: bytes in through a fake transport, bytes out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubegate.ir.model import EndpointTable
from kubegate.planes.proxy.client import ClientConnection
from kubegate.planes.proxy.http import ProxySettings
from kubegate.planes.proxy.server import ProxyServer
from tests.proxy.helpers import prefix, table_for


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("192.0.2.7", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)


async def feed(data: bytes, settings: ProxySettings | None = None) -> FakeTransport:
    server = ProxyServer(table_for({"only.example": (prefix("/", "a"),)}), EndpointTable(), settings)
    conn = ClientConnection(server)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(data)
    for _ in range(5):
        await asyncio.sleep(0)
    conn.connection_lost(None)
    assert not server.errors
    return transport


async def test_no_route_then_no_endpoint_on_one_connection() -> None:
    t = await feed(b"GET / HTTP/1.1\r\nHost: other\r\n\r\nGET / HTTP/1.1\r\nHost: only.example\r\n\r\n")
    first, _, rest = bytes(t.out).partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Server: kubegate" in first
    assert b"HTTP/1.1 503 Service Unavailable" in rest
    assert not t.closed


async def test_malformed_request_closes_after_400() -> None:
    t = await feed(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n")
    assert t.out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in t.out
    assert t.closed


async def test_error_after_pipelined_request_keeps_order() -> None:
    t = await feed(b"GET / HTTP/1.1\r\nHost: other\r\n\r\nGET / HTTP/1.1\nHost: x\n\n")
    out = bytes(t.out)
    assert out.index(b" 404 ") < out.index(b" 400 ")
    assert t.closed


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"HEAD / HTTP/1.1\r\nHost: other\r\n\r\n", b"404"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 300 + b"\r\n\r\n", b"431"),
    ],
)
async def test_generated_errors(raw: bytes, status: bytes) -> None:
    t = await feed(raw, ProxySettings(max_header_bytes=200))
    head, _, body = bytes(t.out).partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == status
    if raw.startswith(b"HEAD"):
        assert body == b""
