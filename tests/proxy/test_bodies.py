"""Request and response bodies: framing, streaming with bounded memory, 100-continue, Upgrade."""

from __future__ import annotations

import asyncio

from kubegate.planes.proxy.http import MiB, ProxySettings
from tests.proxy.helpers import Client, echo_backends, get, prefix, proxy, raw_backend, table_for

ROUTES = table_for({"": (prefix("/", "a"),)})
BIG = ProxySettings(max_body_size=128 * MiB)


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def test_content_length_and_chunked_request_bodies() -> None:
    async with echo_backends("a") as ports, proxy(ROUTES, {"a": [ports["a"]]}) as (_, port):
        c = await Client.connect(port)
        c.send(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world")
        assert (await c.response()).json()["body_size"] == 11
        c.send(
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        body = (await c.response()).json()
        assert body["body_size"] == 11
        names = [n.lower() for n, _ in body["headers"]]
        assert "transfer-encoding" in names and "content-length" not in names
        await c.close()


async def test_64mib_upload_streams_with_bounded_memory() -> None:
    size = 64 * MiB
    async with echo_backends("a") as ports, proxy(ROUTES, {"a": [ports["a"]]}, BIG) as (server, port):
        c = await Client.connect(port)
        c.send(b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        piece = b"x" * MiB
        for _ in range(size // MiB):
            c.writer.write(piece)
            await c.writer.drain()
        r = await c.response(timeout=60)
        assert r.json()["body_size"] == size
        assert server.stats.max_buffered < 4 * MiB, server.stats.max_buffered
        await c.close()


async def test_64mib_download_streams_with_bounded_memory() -> None:
    size = 64 * MiB

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        piece = b"y" * MiB
        for _ in range(size // MiB):
            writer.write(piece)
            await writer.drain()

    async with raw_backend(big) as (bport, _), proxy(ROUTES, {"a": [bport]}) as (server, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/dl"))
        head = await read_head(reader)
        assert head.startswith(b"HTTP/1.1 200")
        received = 0
        async with asyncio.timeout(60):
            while received < size:
                chunk = await reader.read(1 << 20)
                assert chunk
                received += len(chunk)
                if received < 8 * MiB:
                    await asyncio.sleep(0.001)  # a slow reader at first: back-pressure must hold
        assert received == size
        assert server.stats.max_buffered < 4 * MiB, server.stats.max_buffered
        writer.close()


async def test_chunked_and_close_delimited_responses_are_rechunked() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if b"/close" in head:
            writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil-close body")
            await writer.drain()
            writer.close()
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        )
        await read_head(reader)

    async with raw_backend(chunked) as (bport, _), proxy(ROUTES, {"a": [bport]}) as (_, port):
        c = await Client.connect(port)
        c.send(get("/chunked"))
        r = await c.response()
        assert bytes(r.body) == b"abcdefg"
        assert r.header("Transfer-Encoding") == "chunked"
        c.send(get("/close"))
        r = await c.response()
        assert bytes(r.body) == b"until-close body"
        assert r.header("Transfer-Encoding") == "chunked"
        c.send(get("/chunked"))
        assert bytes((await c.response()).body) == b"abcdefg"
        await c.close()


async def test_expect_100_continue() -> None:
    async with echo_backends("a") as ports, proxy(ROUTES, {"a": [ports["a"]]}) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(read_head(reader), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"data")
        c = Client(reader, writer)
        body = (await c.response()).json()
        assert body["body_size"] == 4
        assert "expect" not in [n.lower() for n, _ in body["headers"]]
        # too large: refused before the body is sent
        writer2 = await Client.connect(port)
        writer2.send(
            b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n"
        )
        assert (await writer2.response()).status == 413
        writer.close()


async def test_upgrade_tunnels_bytes_both_ways() -> None:
    async def ws(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        assert b"upgrade: websocket" in head.lower()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhi"
        )
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()

    async with raw_backend(ws) as (bport, _), proxy(ROUTES, {"a": [bport]}) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly")
        head = await asyncio.wait_for(read_head(reader), 5)
        assert head.startswith(b"HTTP/1.1 101")
        async with asyncio.timeout(5):
            got = b""
            while got != b"hiEARLY":
                got += await reader.read(100)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"PING"
        writer.close()


async def test_response_head_reaches_client_before_a_late_body() -> None:
    release = asyncio.Event()

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"4\r\nlate\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read(1)

    async with raw_backend(late) as (bport, _), proxy(ROUTES, {"a": [bport]}) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/stream"))
        head = await asyncio.wait_for(read_head(reader), 5)
        assert head.startswith(b"HTTP/1.1 200 OK")
        release.set()
        assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"4\r\nlate\r\n0\r\n\r\n"
        writer.close()


async def test_http10_client_gets_chunked_upstream_body_close_delimited() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
        )
        await writer.drain()
        await reader.read(1)

    async with raw_backend(chunked) as (bport, _), proxy(ROUTES, {"a": [bport]}) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(-1), 5)  # until the proxy closes
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"transfer-encoding" not in head.lower() and b"Connection: close" in head
        assert body == b"abcdefg"
        writer.close()


async def test_request_trailers_reach_the_upstream_forbidden_ones_do_not() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        data = b""
        while not data.endswith(b"\r\n\r\n") or b"0\r\n" not in data:
            chunk = await reader.read(65536)
            if not chunk:
                break
            data += chunk
        seen.append(head + data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with raw_backend(record) as (bport, _), proxy(ROUTES, {"a": [bport]}) as (_, port):
        c = await Client.connect(port)
        c.send(
            b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: Checksum\r\n\r\n"
            b"5\r\nhello\r\n0\r\nChecksum: abc123\r\nAuthorization: evil\r\nHost: evil\r\n\r\n"
        )
        assert (await c.response()).status == 200
        await c.close()
    forwarded = seen[0]
    body = forwarded.split(b"\r\n\r\n", 1)[1]
    assert body.startswith(b"5\r\nhello\r\n0\r\n")
    assert b"Checksum: abc123\r\n" in body
    # routing and authentication fields in a trailer could confuse the next hop: dropped
    assert b"evil" not in body


async def test_response_trailers_reach_a_chunked_client() -> None:
    async def trailing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Grpc-Status\r\n\r\n"
                b"3\r\nabc\r\n0\r\nGrpc-Status: 0\r\nSet-Cookie: late=1\r\n\r\n"
            )
            await writer.drain()

    async with raw_backend(trailing) as (bport, _), proxy(ROUTES, {"a": [bport]}) as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get("/"))
        head = await read_head(reader)
        assert b"Transfer-Encoding: chunked" in head
        rest = b""
        async with asyncio.timeout(5):
            while not rest.endswith(b"\r\n\r\n"):
                rest += await reader.read(65536)
        assert rest == b"3\r\nabc\r\n0\r\nGrpc-Status: 0\r\n\r\n"
        # the connection stays usable after a message with trailers
        writer.write(get("/again"))
        assert b"200 OK" in await read_head(reader)
        writer.close()
