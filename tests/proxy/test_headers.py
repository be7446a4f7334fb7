"""Header handling, property-tested: hop-by-hop removal and forwarding headers on both paths."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from kubegate.ir.model import EndpointTable
from kubegate.planes.proxy.client import ClientConnection, Request
from kubegate.planes.proxy.forward import ResponseHead
from kubegate.planes.proxy.router import Match
from kubegate.planes.proxy.server import ProxyServer
from tests.proxy.helpers import prefix, table_for
from tests.proxy.test_protocol import FakeTransport

HOP = ["Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer", "Transfer-Encoding", "Upgrade"]
END_TO_END = ["Accept", "X-App", "Cookie", "X-Custom-1", "X-Custom-2", "Cache-Control"]
FORWARDED = ["X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto"]

_names = st.sampled_from(HOP + END_TO_END + FORWARDED)
_headers = st.lists(
    st.tuples(_names, st.sampled_from(["v", "1.2.3.4", "X-App", "close, x-custom-1"])), max_size=12
)


def parse_head(head: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    lines = head.split(b"\r\n")
    assert lines[-2:] == [b"", b""]
    pairs = [line.decode().split(": ", 1) for line in lines[1:-2]]
    return lines[0], [(n, v) for n, v in pairs]


def head_of(headers: list[tuple[bytes, bytes]]) -> ResponseHead:
    """A response head classified the way the upstream connection does it while parsing."""
    head = ResponseHead()
    for name, value in headers:
        head.add(name, value)
    return head


def connection_named(headers: list[tuple[str, str]]) -> set[str]:
    return {t.strip().lower() for n, v in headers if n.lower() == "connection" for t in v.split(",")}


async def _new_conn() -> ClientConnection:
    return ClientConnection(ProxyServer(table_for({"": (prefix("/", "a"),)}), EndpointTable()))


def make_conn() -> ClientConnection:
    # header building needs no loop; the connection is only created inside one
    conn = asyncio.run(_new_conn())
    conn.transport = FakeTransport()  # type: ignore[assignment]
    conn.peer = "192.0.2.7"
    conn.local_port = 8080
    return conn


CONN = make_conn()


@settings(max_examples=200, deadline=None)
@given(_headers)
def test_request_head_drops_hop_by_hop_and_sets_forwarding(headers: list[tuple[str, str]]) -> None:
    req = Request(CONN.server.published)
    req.target = b"/p?q=1"
    req.method = "GET"
    req.host = "h"
    # through the parser callback, which sorts the headers as they arrive
    CONN.parsing = req
    CONN.in_headers = True
    CONN.header_bytes = 0
    for name, value in headers:
        CONN.on_header(name.encode(), value.encode())
    line, out = parse_head(CONN._request_head(req, Match((), None, None)))
    assert line == b"GET /p?q=1 HTTP/1.1"
    names = [n.lower() for n, _ in out]
    dropped = {h.lower() for h in HOP} | connection_named(headers)
    # framing and upgrade lines the proxy writes itself (the parser would refuse a request whose
    # Transfer-Encoding is not chunked, and ignore an Upgrade it cannot honour)
    ours = {"x-forwarded-for", "x-real-ip", "x-forwarded-proto"}
    if req.chunked:
        ours.add("transfer-encoding")
    if req.upgrade is not None:
        ours |= {"upgrade", "connection"}
    assert not dropped & set(names) - ours
    # end-to-end headers keep their order and values
    kept = [(n, v) for n, v in headers if n.lower() not in dropped and n not in FORWARDED]
    assert [(n, v) for n, v in out if n in END_TO_END] == kept
    # the peer is untrusted: forwarding headers are ours, exactly once each
    values = {n.lower(): v for n, v in out}
    assert names.count("x-forwarded-for") == 1 and values["x-forwarded-for"] == "192.0.2.7"
    assert values["x-real-ip"] == "192.0.2.7" and values["x-forwarded-proto"] == "http"


@settings(max_examples=200, deadline=None)
@given(_headers, st.sampled_from([200, 204, 304, 404]), st.sampled_from(["1.1", "1.0"]))
def test_response_head_reframes(headers: list[tuple[str, str]], status: int, version: str) -> None:
    transport = FakeTransport()
    CONN.transport = transport  # type: ignore[assignment]
    CONN.closed = False
    req = Request(CONN.server.published)
    req.version = version
    req.body_done = True
    CONN.active = req
    CONN.resp_keep_alive = True
    CONN.resp_head = None
    raw = [(n.encode(), v.encode()) for n, v in headers]
    CONN.upstream_headers(status, head_of(raw), False)
    CONN.upstream_flush()
    line, out = parse_head(bytes(transport.out))
    assert line.startswith(b"HTTP/1.1 %d " % status)
    names = [n.lower() for n, _ in out]
    dropped = {h.lower() for h in HOP} | connection_named(headers)
    ours = {"transfer-encoding", "connection"}
    assert not (dropped - ours) & set(names)
    has_length = any(n.lower() == "content-length" for n, _ in headers)
    framed_by_us = status not in (204, 304) and not has_length
    assert ("transfer-encoding" in names) == (framed_by_us and version == "1.1")
    if framed_by_us and version == "1.0":
        assert ("Connection", "close") in out
