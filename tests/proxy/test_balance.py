"""Balancers: distribution, consistency of the hash ring, ejection with back-off."""

from __future__ import annotations

from collections import Counter

from kubegate.ir.model import Cluster, Endpoint, EndpointTable, RoutingTable
from kubegate.planes.proxy.balance import Balancer, Clusters, HashRing, Health, LeastRequest, hash_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def eps(n: int) -> list[Endpoint]:
    return [Endpoint(ip=f"10.0.0.{i}", port=80) for i in range(1, n + 1)]


def test_round_robin_spreads_evenly() -> None:
    b = Balancer(eps(3), Health(1, 30))
    counts = Counter(b.pick(None) for _ in range(300))
    assert sorted(counts.values()) == [100, 100, 100]


def test_least_request_prefers_idle() -> None:
    b = LeastRequest(eps(3), Health(1, 30))
    first = b.pick(None)
    assert first is not None
    b.started(first)
    b.started(first)
    second = b.pick(None)
    assert second is not None and second != first
    b.started(second)
    third = b.pick(None)
    assert third not in (first, second)


def test_ejection_backs_off_exponentially_and_clears() -> None:
    clock = Clock()
    health = Health(1.0, 8.0, clock)
    b = Balancer(eps(2), health)
    bad = ("10.0.0.1", 80)
    assert health.failed(bad) == 1.0
    assert all(b.pick(None) == ("10.0.0.2", 80) for _ in range(5))
    clock.now += 1.5
    assert bad in {b.pick(None) for _ in range(4)}
    assert health.failed(bad) == 2.0
    assert health.failed(bad) == 4.0
    assert health.failed(bad) == 8.0
    assert health.failed(bad) == 8.0  # capped
    health.succeeded(bad)
    assert not health.ejected(bad)


def test_all_ejected_falls_back_but_honours_exclusions() -> None:
    health = Health(10, 10, Clock())
    b = Balancer(eps(2), health)
    for e in b.addresses:
        health.failed(e)
    assert b.pick(None) is not None
    assert b.pick(None, exclude=b.addresses) is None


def test_hash_ring_is_sticky_and_consistent() -> None:
    health = Health(1, 30)
    ring = HashRing(eps(5), health)
    keys = [f"client-{i}" for i in range(500)]
    before = {k: ring.pick(k) for k in keys}
    assert all(ring.pick(k) == before[k] for k in keys)
    assert len(set(before.values())) == 5
    smaller = HashRing(eps(5)[:4], health)
    moved = [k for k in keys if smaller.pick(k) != before[k]]
    # only the keys of the removed endpoint move
    assert all(before[k] == ("10.0.0.5", 80) for k in moved)
    # an ejected owner's keys go to the next owner on the ring, the rest stay
    health.failed(("10.0.0.1", 80))
    for k in keys:
        if before[k] != ("10.0.0.1", 80):
            assert ring.pick(k) == before[k]
        else:
            assert ring.pick(k) != ("10.0.0.1", 80)


def test_hash_key_expressions() -> None:
    headers = [(b"Cookie", b"a=1; session=xyz"), (b"X-User-Id", b"42")]
    assert hash_key("$remote_addr", "1.2.3.4", headers, "/p?q") == "1.2.3.4"
    assert hash_key("$request_uri", "1.2.3.4", headers, "/p?q") == "/p?q"
    assert hash_key("$cookie_session", "1.2.3.4", headers, "/") == "xyz"
    assert hash_key("$http_x_user_id", "1.2.3.4", headers, "/") == "42"
    assert hash_key("$cookie_missing", "1.2.3.4", headers, "/") is None


def test_clusters_use_the_configured_algorithm() -> None:
    routing = RoutingTable(
        clusters=(
            Cluster(name="ns/a:80", service="ns/a", port=80, balance="hash", hash_by="$remote_addr"),
            Cluster(name="ns/b:80", service="ns/b", port=80, balance="least_request"),
        )
    )
    table = EndpointTable(clusters={"ns/a:80": tuple(eps(2)), "ns/b:80": tuple(eps(2)), "ns/c:80": ()})
    c = Clusters(routing, table, Health(1, 30))
    assert isinstance(c.balancer("ns/a:80"), HashRing)
    assert isinstance(c.balancer("ns/b:80"), LeastRequest)
    assert c.balancer("ns/c:80") is not None
    assert c.balancer("ns/c:80").pick(None) is None  # type: ignore[union-attr]
    assert c.balancer("ns/missing:80") is None
