"""The echo backend on its own."""

from __future__ import annotations

import asyncio

from kubegate.echo import start_echo
from tests.proxy.helpers import Client, port_of


async def test_echo_describes_requests_and_keeps_alive() -> None:
    server = await start_echo("e1", "127.0.0.1", 0)
    try:
        c = await Client.connect(port_of(server))
        c.send(b"POST /a/b?x=1&y=2 HTTP/1.1\r\nHost: h\r\nX-Test: yes\r\nContent-Length: 5\r\n\r\nhello")
        body = (await c.response()).json()
        assert body == {
            "name": "e1",
            "method": "POST",
            "path": "/a/b",
            "query": "x=1&y=2",
            "headers": [["Host", "h"], ["X-Test", "yes"], ["Content-Length", "5"]],
            "body_size": 5,
        }
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        r = await c.response()
        assert r.json()["method"] == "GET" and r.header("Connection") == "close"
        assert await c.closed()
        c = await Client.connect(port_of(server))
        c.send(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01\r\n\r\n")
        assert (await c.response()).status == 400
    finally:
        server.close()


async def test_echo_answers_100_continue() -> None:
    server = await start_echo("e", "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"ok")
        c = Client(reader, writer)
        assert (await c.response()).json()["body_size"] == 2
        writer.close()
    finally:
        server.close()
