"""The shortcuts taken for speed must not change answers: the router's match cache and the single pass
over headers that collects Connection tokens on the way. No timing here (the bench measures speed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubegate.planes.proxy.client import Request
from kubegate.planes.proxy.router import BadPath, Router
from tests.proxy.helpers import prefix, table_for
from tests.proxy.test_headers import CONN, head_of, parse_head
from tests.proxy.test_protocol import FakeTransport

ROUTER_TABLE = table_for(
    {
        "a.example": (prefix("/api", "api", rewrite_target="/v2"), prefix("/", "web")),
        "*.wild.example": (prefix("/", "wild"),),
    },
    default="fallback",
)

_targets = st.sampled_from(["/", "/api", "/api/x?q=1", "/API", "/a/../api/y", "/%61pi/z", "//api", "/web#f"])
_hosts = st.sampled_from(["a.example", "A.Example:8080", "x.wild.example", "other", ""])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_hosts, _targets), min_size=1, max_size=20))
def test_cached_matches_equal_fresh_ones(requests: list[tuple[str, str]]) -> None:
    cached = Router(ROUTER_TABLE)
    for host, target in requests:
        # a fresh router has an empty cache: its answer is the uncached one
        assert cached.match(host, target) == Router(ROUTER_TABLE).match(host, target)


def test_bad_targets_keep_failing_when_repeated() -> None:
    router = Router(ROUTER_TABLE)
    for _ in range(3):
        with pytest.raises(BadPath):
            router.match("a.example", "/../etc/passwd")
        with pytest.raises(BadPath):
            router.match("a.example", "http://elsewhere/")


def test_match_cache_stays_bounded() -> None:
    router = Router(ROUTER_TABLE)
    for n in range(10_000):
        assert router.match("a.example", f"/api/{n}") is not None
    assert len(router._cache) <= 4096
    long_target = "/api/" + "x" * 1000
    match = router.match("a.example", long_target)
    assert match is not None and match.rewritten == "/v2/" + "x" * 1000
    assert ("a.example", long_target) not in router._cache


def test_response_connection_tokens_drop_named_headers_only() -> None:
    transport = FakeTransport()
    CONN.transport = transport  # type: ignore[assignment]
    CONN.closed = False
    req = Request(CONN.server.published)
    req.body_done = True
    CONN.active = req
    CONN.resp_keep_alive = True
    CONN.resp_head = None
    headers = [
        (b"Connection", b"keep-alive"),
        (b"X-Secret", b"1"),
        (b"Content-Length", b"0"),
        (b"Connection", b"X-Secret"),
        (b"X-Kept", b"2"),
    ]
    CONN.upstream_headers(200, head_of(headers), False)
    CONN.upstream_flush()
    line, out = parse_head(bytes(transport.out))
    assert line == b"HTTP/1.1 200 OK"
    assert out == [("Content-Length", "0"), ("X-Kept", "2")]
