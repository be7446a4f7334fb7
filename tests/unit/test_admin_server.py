import asyncio

from kubegate.admin.server import AdminServer, Response


async def _get(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_serves_registered_paths_and_lists_them_on_404() -> None:
    ready = {"value": False}

    def readyz() -> Response:
        return (200, "text/plain", b"ok\n") if ready["value"] else (503, "text/plain", b"not synced\n")

    server = AdminServer({"/healthz": lambda: (200, "text/plain", b"ok\n"), "/readyz": readyz})
    await server.start("127.0.0.1", 0)
    try:
        assert (await _get(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 200"
        )
        assert b" 503 " in await _get(server.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        ready["value"] = True
        assert b" 200 " in await _get(server.port, b"GET /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\n")
        missing = await _get(server.port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 404 " in missing and b"/healthz" in missing
        assert b" 405 " in await _get(server.port, b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert b" 400 " in await _get(server.port, b"GARBAGE\r\n\r\n")
    finally:
        await server.close()


async def test_failing_handler_answers_503_and_listener_survives() -> None:
    def broken() -> Response:
        raise RuntimeError("boom")

    server = AdminServer({"/debug/broken": broken, "/healthz": lambda: (200, "text/plain", b"ok\n")})
    await server.start("127.0.0.1", 0)
    try:
        assert b" 503 " in await _get(server.port, b"GET /debug/broken HTTP/1.1\r\n\r\n")
        assert b" 200 " in await _get(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
    finally:
        await server.close()
