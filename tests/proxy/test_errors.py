"""Errors we generate, request smuggling, retries, ejection, timeouts, hot swap, forwarding headers."""

from __future__ import annotations

import asyncio
import socket

import pytest

from kubegate.ir.model import Endpoint, EndpointTable
from kubegate.planes.proxy.http import ProxySettings
from kubegate.planes.proxy.server import AccessRecord
from tests.proxy.helpers import Client, echo_backends, get, prefix, proxy, raw_backend, table_for

ROUTES = table_for({"": (prefix("/", "a"),)})


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


async def one(port: int, raw: bytes) -> tuple[int, bytes, str | None]:
    c = await Client.connect(port)
    c.send(raw)
    r = await c.response()
    await c.close()
    return r.status, bytes(r.body), r.header("Server")


async def test_no_route_404_and_no_endpoint_503() -> None:
    routing = table_for({"a.example": (prefix("/app", "a"),)})
    async with proxy(routing, {"a": []}) as (_, port):
        status, body, server = await one(port, get("/x", host="b.example"))
        assert (status, server) == (404, "kubegate")
        assert b"Traceback" not in body and body.strip()
        assert (await one(port, get("/app", host="a.example")))[0] == 503


async def test_connect_refused_502_and_ejection() -> None:
    dead = closed_port()
    async with proxy(ROUTES, {"a": [dead]}) as (server, port):
        assert (await one(port, get("/")))[0] == 502
        assert server.health.ejected(("127.0.0.1", dead))


async def test_upstream_read_timeout_504() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        await asyncio.sleep(5)

    settings = ProxySettings(upstream_read_timeout=0.3)
    async with raw_backend(silent) as (bport, _), proxy(ROUTES, {"a": [bport]}, settings) as (_, port):
        assert (await one(port, get("/")))[0] == 504


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"Host: x\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413),
        (b"GET /../etc HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
        (b"BLAH\r\n\r\n", 400),
    ],
)
async def test_bad_requests_get_short_error(raw: bytes, status: int) -> None:
    async with echo_backends("a") as ports, proxy(ROUTES, {"a": [ports["a"]]}) as (server, port):
        got, body, header = await one(port, raw)
        assert (got, header) == (status, "kubegate")
        assert b"Traceback" not in body
        assert server.pool.opened == {}


SMUGGLING = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate-cl": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
    "conflicting-cl": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nGET /smuggled\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: x\n\n",
    "te-not-chunked-last": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    "space-before-colon": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_smuggling_vectors_refused_and_never_forwarded(name: str) -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            seen.append(data)

    async with raw_backend(record) as (bport, conns), proxy(ROUTES, {"a": [bport]}) as (_, port):
        assert (await one(port, SMUGGLING[name]))[0] == 400
        await asyncio.sleep(0.05)
        assert seen == [] and conns == []


async def test_body_over_route_limit_413_chunked() -> None:
    routes = table_for({"": (prefix("/", "a", max_body_size=10),)})
    async with echo_backends("a") as ports, proxy(routes, {"a": [ports["a"]]}) as (_, port):
        raw = (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n"
        )
        assert (await one(port, raw))[0] == 413
        ok = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n1234567890"
        assert (await one(port, ok))[0] == 200


async def test_idempotent_request_retried_on_another_endpoint_post_is_not() -> None:
    hits: list[str] = []

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        hits.append("reset")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async with raw_backend(reset) as (bad, _), echo_backends("good") as ports:
        table = EndpointTable(
            clusters={"a": (Endpoint(ip="127.0.0.1", port=bad), Endpoint(ip="127.0.0.1", port=ports["good"]))}
        )
        async with proxy(ROUTES, table) as (_, port):
            for _ in range(4):
                status, body, _h = await one(port, get("/"))
                assert status == 200 and b'"good"' in body
            hits.clear()
            statuses = set()
            for _ in range(4):
                statuses.add((await one(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"))[0])
            # round robin sends half the POSTs to the resetting endpoint: those are not retried
            assert statuses == {200, 502}
            assert len(hits) == 2


async def test_refused_endpoint_is_skipped_for_any_method() -> None:
    dead = closed_port()
    async with echo_backends("good") as ports:
        table = EndpointTable(
            clusters={
                "a": (Endpoint(ip="127.0.0.1", port=dead), Endpoint(ip="127.0.0.1", port=ports["good"]))
            }
        )
        async with proxy(ROUTES, table) as (server, port):
            for _ in range(4):
                raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"
                assert (await one(port, raw))[0] == 200
            assert server.health.ejected(("127.0.0.1", dead))


async def test_slowloris_header_timeout_and_idle_keepalive_close() -> None:
    settings = ProxySettings(header_timeout=0.3, keepalive_timeout=0.3)
    async with echo_backends("a") as ports, proxy(ROUTES, {"a": [ports["a"]]}, settings) as (_, port):
        c = await Client.connect(port)
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert (await c.response()).status == 408
        c = await Client.connect(port)
        c.send(get("/"))
        assert (await c.response()).status == 200
        assert await c.closed(timeout=3)


async def test_hot_swap_keeps_in_flight_requests_on_their_table() -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        await writer.drain()

    async with (
        raw_backend(slow) as (slow_port, _),
        echo_backends("new") as ports,
        proxy(ROUTES, {"a": [slow_port]}) as (server, port),
    ):
        first = await Client.connect(port)
        first.send(get("/"))
        await asyncio.sleep(0.1)
        server.update_routing(table_for({"": (prefix("/", "b"),)}))
        server.update_endpoints(
            EndpointTable(
                clusters={
                    "a": (Endpoint(ip="127.0.0.1", port=slow_port),),
                    "b": (Endpoint(ip="127.0.0.1", port=ports["new"]),),
                }
            )
        )
        status, body, _ = await one(port, get("/"))
        assert status == 200 and b'"new"' in body
        release.set()
        r = await first.response()
        assert bytes(r.body) == b"slow"
        await first.close()


async def test_forwarded_headers_trusted_only_from_configured_networks() -> None:
    spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 6.6.6.6\r\n"
    async with echo_backends("a") as ports:
        for trusted, want_xff, want_real, want_proto in (
            ((), "127.0.0.1", "127.0.0.1", "http"),
            (("127.0.0.0/8",), "6.6.6.6, 127.0.0.1", "6.6.6.6", "https"),
        ):
            settings = ProxySettings(trusted_proxies=trusted)
            async with proxy(ROUTES, {"a": [ports["a"]]}, settings) as (_, port):
                c = await Client.connect(port)
                c.send(get("/", extra=spoof + "Connection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\n"))
                headers = {k.lower(): v for k, v in (await c.response()).json()["headers"]}
                await c.close()
                assert headers["x-forwarded-for"] == want_xff
                assert headers["x-real-ip"] == want_real
                assert headers["x-forwarded-proto"] == want_proto
                assert "x-secret" not in headers and "keep-alive" not in headers


async def test_access_log_and_graceful_close() -> None:
    log: list[AccessRecord] = []
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_backend(slow) as (bport, _), proxy(ROUTES, {"a": [bport]}, log=log) as (server, port):
        idle = await Client.connect(port)
        busy = await Client.connect(port)
        busy.send(get("/busy", host="h.example"))
        await asyncio.sleep(0.1)
        closing = asyncio.create_task(server.close(drain_timeout=5))
        await asyncio.sleep(0.1)
        assert await idle.closed()
        release.set()
        r = await busy.response()
        assert bytes(r.body) == b"ok" and r.header("Connection") == "close"
        await closing
        with pytest.raises(OSError):
            await Client.connect(port)
    assert [(x.method, x.path, x.host, x.status, x.upstream) for x in log] == [
        ("GET", "/busy", "h.example", 200, f"127.0.0.1:{bport}")
    ]
    assert log[0].bytes > 2 and log[0].duration > 0


async def test_stale_pooled_connection_is_retried_on_a_fresh_one() -> None:
    async def one_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # keep-alive was promised, but the next request on this connection is dropped unanswered
        await reader.readuntil(b"\r\n\r\n")

    async with raw_backend(one_per_connection) as (bport, conns), proxy(ROUTES, {"a": [bport]}) as (_, port):
        c = await Client.connect(port)
        for _ in range(3):
            c.send(get("/"))
            r = await c.response()
            assert r.status == 200 and bytes(r.body) == b"ok"
        await c.close()
        assert len(conns) == 3


async def test_interim_responses_are_not_relayed() -> None:
    async def hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
        )
        await writer.drain()
        await reader.read(1)

    async with raw_backend(hints) as (bport, _), proxy(ROUTES, {"a": [bport]}) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert await reader.readexactly(1) == b"x"
        writer.close()


async def test_connection_limit() -> None:
    settings = ProxySettings(max_connections=1)
    async with echo_backends("a") as ports, proxy(ROUTES, {"a": [ports["a"]]}, settings) as (_, port):
        first = await Client.connect(port)
        first.send(get("/"))
        assert (await first.response()).status == 200
        second = await Client.connect(port)
        assert (await second.response()).status == 503
        await first.close()


async def test_oversized_head_is_refused_while_it_streams_in() -> None:
    settings = ProxySettings(max_header_bytes=4096)
    async with echo_backends("a") as ports, proxy(ROUTES, {"a": [ports["a"]]}, settings) as (_, port):
        c = await Client.connect(port)
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        # the head never ends; the proxy must answer without waiting for (or holding) all of it
        for i in range(200):
            c.send(b"X-Filler-%d: %b\r\n" % (i, b"f" * 100))
        assert (await c.response()).status == 431
        c = await Client.connect(port)
        c.send(b"GET /" + b"u" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await c.response()).status == 431


async def test_thousands_of_pipelined_requests_in_one_write() -> None:
    async with echo_backends("a") as ports, proxy(ROUTES, {"a": [ports["a"]]}) as (server, port):
        c = await Client.connect(port)
        n = 1500
        c.send(b"".join(get(f"/{i}", host="x") for i in range(n)))
        for i in range(n):
            r = await c.response()
            assert r.json()["path"] == f"/{i}"
        await c.close()
        assert server.stats.requests == n


async def test_client_leaving_mid_response_drops_the_upstream_connection() -> None:
    started = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        started.set()
        while True:
            writer.write(b"z" * 65536)
            await writer.drain()

    async with raw_backend(endless) as (bport, conns), proxy(ROUTES, {"a": [bport]}) as (server, port):
        c = await Client.connect(port)
        c.send(get("/"))
        await asyncio.wait_for(started.wait(), 5)
        await c.reader.read(1000)
        await c.close()
        async with asyncio.timeout(5):
            while not conns[0].is_closing() and not conns[0].transport.is_closing():
                await asyncio.sleep(0.02)
        assert server.pool.idle_count(("127.0.0.1", bport)) == 0
        assert server.stats.requests == 1


async def test_connect_timeout_504() -> None:
    # a listener that never accepts: once its backlog is full, the kernel drops further SYNs
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(address)
        fillers.append(s)
    await asyncio.sleep(0.1)
    settings = ProxySettings(connect_timeout=0.3, retries=0)
    try:
        async with proxy(ROUTES, {"a": [address[1]]}, settings) as (server, port):
            assert (await one(port, get("/")))[0] == 504
            assert server.health.ejected(("127.0.0.1", address[1]))
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_stalled_request_body_gets_408_after_the_client_body_timeout() -> None:
    settings = ProxySettings(client_body_timeout=0.3)
    async with echo_backends("a") as ports, proxy(ROUTES, {"a": [ports["a"]]}, settings) as (server, port):
        c = await Client.connect(port)
        c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part")
        started = asyncio.get_running_loop().time()
        response = await c.response(timeout=5)
        assert response.status == 408
        assert asyncio.get_running_loop().time() - started < 3
        assert await c.closed(timeout=3)
        # a body that keeps arriving, each piece within the timeout, is not cut off
        c = await Client.connect(port)
        c.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
        for piece in (b"ab", b"cd", b"ef"):
            await asyncio.sleep(0.2)
            c.send(piece)
        response = await c.response(timeout=5)
        assert response.status == 200 and response.json()["body_size"] == 6
        await c.close()
        assert server.stats.status_counts.get(408) == 1
