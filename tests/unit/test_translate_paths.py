"""The Kubernetes Ingress documentation's path matching examples, sent through our route order.

A tiny reference matcher stands in for a data plane: the first route (in IR order) whose match accepts
the request path wins; no match means the default backend (None here).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubegate.ir.model import Route, VirtualHost
from kubegate.objects.snapshot import Snapshot
from kubegate.translate import translate
from tests.golden.harness import CASES, load_case


def accepts(route: Route, path: str) -> bool:
    if route.match == "Exact":
        return path == route.path
    if route.match == "Prefix":
        return route.path in ("/", path) or path.startswith(route.path + "/")
    return re.match(route.path, path) is not None


def select(vhost: VirtualHost, path: str) -> str | None:
    for route in vhost.routes:
        if accepts(route, path):
            return route.backends[0].cluster
    return None


# (row of the docs table, request path, the Service that must answer, None for "no match")
TABLE = [
    ("row01", "/anything", "root"),
    ("row01", "/", "root"),
    ("row02", "/foo", "foo"),
    ("row02", "/bar", None),
    ("row02", "/foo/", None),
    ("row05", "/foo", None),
    ("row06", "/foo", "foo"),
    ("row06", "/foo/", "foo"),
    ("row07", "/foo", "foo"),
    ("row07", "/foo/", "foo"),
    ("row08", "/aaa/bbb", None),
    ("row09", "/aaa/bbb", "bbb"),
    ("row10", "/aaa/bbb", "bbb"),
    ("row09", "/aaa/bbb/", "bbb"),
    ("row09", "/aaa/bbb/ccc", "bbb"),
    ("row09", "/aaa/bbbxyz", None),
    ("row14", "/aaa/ccc", "aaa"),
    ("row15", "/aaa/bbb", "bbb"),
    ("row15", "/ccc", "root"),
    ("row17", "/ccc", None),
    ("row18", "/foo", "foo-exact"),
    ("row18", "/foo/x", "foo"),
]


@pytest.fixture(scope="module")
def hosts() -> dict[str, VirtualHost]:
    objects, options = load_case(Path(CASES / "path-matching.in.yaml"))
    translation = translate(Snapshot.of(objects), options)
    assert translation.diagnostics == ()
    return {vhost.host.split(".")[0]: vhost for vhost in translation.routing.virtual_hosts}


@pytest.mark.parametrize(("row", "path", "service"), TABLE)
def test_docs_table(hosts: dict[str, VirtualHost], row: str, path: str, service: str | None) -> None:
    expected = None if service is None else f"default/{service}:80"
    assert select(hosts[row], path) == expected


def test_regex_paths_order_longest_first() -> None:
    objects, options = load_case(Path(CASES / "annotations.in.yaml"))
    translation = translate(Snapshot.of(objects), options)
    regex_host = next(v for v in translation.routing.virtual_hosts if v.host == "regex.example.com")
    assert [(r.match, r.path) for r in regex_host.routes] == [
        ("Exact", "/v1/users/me"),
        ("Regex", "/v[0-9]+/users"),
        ("Regex", "/v[0-9]+/us"),
    ]
    assert select(regex_host, "/v2/users/7") == "default/web:80"
