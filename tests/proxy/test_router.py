"""Router: host and path matching, normalisation and rewrite, checked against a naive reference."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubegate.ir.model import Backend, Route, RouteOptions, RoutingTable, VirtualHost
from kubegate.planes.proxy.router import BadPath, Router, normalize_host, normalize_path


def route(match: str, path: str, cluster: str, rewrite: str | None = None) -> Route:
    return Route(
        match=match,  # type: ignore[arg-type]
        path=path,
        backends=(Backend(cluster=cluster),),
        options=RouteOptions(rewrite_target=rewrite),
    )


def cluster_of(router: Router, host: str, target: str) -> str | None:
    m = router.match(host, target)
    return None if m is None else m.backend_choices[0].cluster


def test_host_order_exact_wildcard_any_default() -> None:
    table = RoutingTable(
        virtual_hosts=(
            VirtualHost(host="foo.bar.com", routes=(route("Prefix", "/", "exact"),)),
            VirtualHost(host="*.bar.com", routes=(route("Prefix", "/", "wild"),)),
            VirtualHost(host="", routes=(route("Prefix", "/api", "any"),)),
        ),
        default_backend=Backend(cluster="default"),
    )
    r = Router(table)
    assert cluster_of(r, "FOO.bar.com:8080", "/") == "exact"
    assert cluster_of(r, "x.bar.com", "/") == "wild"
    # a wildcard matches exactly one label
    assert cluster_of(r, "a.b.bar.com", "/api") == "any"
    assert cluster_of(r, "bar.com", "/api/x") == "any"
    assert cluster_of(r, "other", "/nothing") == "default"
    assert cluster_of(r, "[::1]:8080", "/api") == "any"


def test_no_match_uses_vhost_default_then_404() -> None:
    table = RoutingTable(
        virtual_hosts=(
            VirtualHost(
                host="a", routes=(route("Exact", "/x", "x"),), default_backend=Backend(cluster="a-default")
            ),
            VirtualHost(host="b", routes=(route("Exact", "/x", "x"),)),
        )
    )
    r = Router(table)
    assert cluster_of(r, "a", "/y") == "a-default"
    assert r.match("b", "/y") is None
    assert r.match("c", "/x") is None


def test_prefix_is_element_wise_and_exact_is_equal() -> None:
    r = Router(
        RoutingTable(
            virtual_hosts=(
                VirtualHost(
                    host="", routes=(route("Exact", "/foo/bar", "exact"), route("Prefix", "/foo", "p"))
                ),
            )
        )
    )
    assert cluster_of(r, "h", "/foo") == "p"
    assert cluster_of(r, "h", "/foo/") == "p"
    assert cluster_of(r, "h", "/foo/bar") == "exact"
    assert cluster_of(r, "h", "/foo/bar/") == "p"
    assert cluster_of(r, "h", "/foobar") is None
    assert cluster_of(r, "h", "/foo/bar?q=1") == "exact"
    assert cluster_of(r, "h", "/%66oo/bar") == "exact"


def test_regex_first_match_in_order() -> None:
    r = Router(
        RoutingTable(
            virtual_hosts=(
                VirtualHost(
                    host="",
                    routes=(route("Regex", "/api/v[0-9]+", "re"), route("Prefix", "/api", "api")),
                ),
            )
        )
    )
    assert cluster_of(r, "h", "/api/v2/x") == "re"
    assert cluster_of(r, "h", "/api/vx") == "api"


@pytest.mark.parametrize(
    ("route_", "target", "expected"),
    [
        (route("Regex", "/something(/|$)(.*)", "c", "/$2"), "/something/new?a=1", "/new?a=1"),
        (route("Regex", "/something(/|$)(.*)", "c", "/$2"), "/something", "/"),
        (route("Prefix", "/app", "c", "/"), "/app/x/y?z", "/x/y?z"),
        (route("Prefix", "/app", "c", "/base"), "/app", "/base"),
        (route("Prefix", "/", "c", "/base/"), "/x", "/base/x"),
        (route("Exact", "/e", "c", "/other"), "/e?k", "/other?k"),
    ],
)
def test_rewrite(route_: Route, target: str, expected: str) -> None:
    r = Router(RoutingTable(virtual_hosts=(VirtualHost(host="", routes=(route_,)),)))
    m = r.match("h", target)
    assert m is not None
    assert m.rewritten == expected


def test_bad_targets() -> None:
    r = Router(RoutingTable())
    for target in ("http://a/b", "*", "/../etc/passwd", "/a/../../b", "a"):
        with pytest.raises(BadPath):
            r.match("h", target)


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/a/./b/../c", "/a/c"),
        ("//a///b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/%7euser/%2Fx%2f", "/~user/%2Fx%2F"),
        ("/a/%2e%2e/b", "/b"),
        ("/", "/"),
        ("/.", "/"),
    ],
)
def test_normalize_examples(raw: str, path: str) -> None:
    assert normalize_path(raw)[0] == path


def test_normalize_host() -> None:
    assert normalize_host("Example.COM:80") == "example.com"
    assert normalize_host("[::1]:8080") == "[::1]"
    assert normalize_host("[::1]") == "[::1]"
    assert normalize_host("example.com.") == "example.com"


_segment = st.sampled_from(["a", "b", "ab", ".", "..", "", "%2e", "%2E%2e", "%41", "%2f", "c%7e"])
_paths = st.lists(_segment, max_size=8).map(lambda segs: "/" + "/".join(segs))


@given(_paths)
def test_normalize_idempotent_and_clean(raw: str) -> None:
    try:
        path, _ = normalize_path(raw)
    except BadPath:
        return
    assert path.startswith("/")
    assert "/./" not in path and "/../" not in path and "//" not in path
    assert not path.endswith("/.") and not path.endswith("/..")
    assert normalize_path(path)[0] == path


# --- property test against a naive reference matcher ------------------------------------------

_elem = st.sampled_from(["a", "b", "c", "ab"])
_route_paths = st.lists(_elem, min_size=0, max_size=3).map(lambda e: "/" + "/".join(e))


@st.composite
def _routes(draw: st.DrawFn) -> Route:
    kind = draw(st.sampled_from(["Exact", "Prefix", "Prefix", "Regex"]))
    path = draw(_route_paths)
    if kind == "Regex":
        path = draw(st.sampled_from(["/a.*", "/[ab]+$", "/c/", "/b(/|$)", "/.*"]))
    return route(kind, path, f"c{draw(st.integers(0, 10_000))}")


def _reference(routes: list[Route], path: str) -> Route | None:
    for r in routes:
        if r.match == "Exact" and r.path == path:
            return r
        if r.match == "Prefix":
            p = r.path.rstrip("/")
            if p in ("", path) or path.startswith(p + "/"):
                return r
        if r.match == "Regex" and re.match(r.path, path):
            return r
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(_routes(), max_size=12), st.lists(st.sampled_from(["a", "b", "c", "ab", "abc"]), max_size=4))
def test_matches_reference(routes: list[Route], elems: list[str]) -> None:
    path = "/" + "/".join(elems)
    router = Router(RoutingTable(virtual_hosts=(VirtualHost(host="", routes=tuple(routes)),)))
    got = router.match("any", path)
    want = _reference(routes, path)
    assert (got.route if got else None) is want
