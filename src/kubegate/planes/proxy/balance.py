"""Per-cluster load balancing over the ready endpoints, with passive health (ejection).

- round_robin (default), least_request (fewest requests in flight, round robin among equals), and hash:
  a consistent-hashing ring keyed by ``Cluster.hash_by`` (``$remote_addr``, ``$cookie_NAME``,
  ``$http_NAME``, ``$request_uri``), so adding or removing one endpoint moves only its share of keys.
- an endpoint whose connect is refused or reset is ejected for ``base * 2**(failures-1)`` seconds (capped);
  a success clears its record. When every endpoint is ejected, ejection is ignored: sending traffic to a
  possibly-recovered endpoint beats answering 503 for everyone.
"""

from __future__ import annotations

import bisect
import time
import zlib
from collections.abc import Callable, Iterable

from kubegate.ir.model import Cluster, Endpoint, EndpointTable, RoutingTable

Address = tuple[str, int]

_VNODES = 64


class Health:
    """Ejection records per endpoint address, shared by all clusters and table versions."""

    __slots__ = ("_base", "_clock", "_max", "_records")

    def __init__(self, base: float, maximum: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._base = base
        self._max = maximum
        self._clock = clock
        # address -> (consecutive failures, ejected until)
        self._records: dict[Address, tuple[int, float]] = {}

    def failed(self, address: Address) -> float:
        """Record a failed connect; returns the ejection time in seconds."""
        failures = self._records.get(address, (0, 0.0))[0] + 1
        duration: float = min(self._base * 2.0 ** (failures - 1), self._max)
        self._records[address] = (failures, self._clock() + duration)
        return duration

    def succeeded(self, address: Address) -> None:
        if self._records:
            self._records.pop(address, None)

    @property
    def any_ejected(self) -> bool:
        """False while every endpoint is healthy: the common case, which pickers skip checks for."""
        return bool(self._records)

    def ejected(self, address: Address) -> bool:
        record = self._records.get(address)
        return record is not None and record[1] > self._clock()


def _address(e: Endpoint) -> Address:
    return (e.ip, e.port)


class Balancer:
    """Round robin; the base of the others."""

    __slots__ = ("_health", "_next", "addresses")

    # whether started()/finished() must be called for each request (least-request counts them)
    counts_requests = False

    def __init__(self, endpoints: Iterable[Endpoint], health: Health) -> None:
        self.addresses: tuple[Address, ...] = tuple(_address(e) for e in endpoints)
        self._health = health
        self._next = 0

    def _usable(self, address: Address, exclude: Iterable[Address]) -> bool:
        return address not in exclude and not self._health.ejected(address)

    def pick(self, key: str | None, exclude: tuple[Address, ...] = ()) -> Address | None:
        addresses = self.addresses
        n = len(addresses)
        if n == 0:
            return None
        start = self._next
        if not exclude and not self._health.any_ejected:
            # nothing to skip: the next in turn
            self._next = (start + 1) % n
            return addresses[start % n]
        for i in range(n):
            candidate = addresses[(start + i) % n]
            if self._usable(candidate, exclude):
                self._next = (start + i + 1) % n
                return candidate
        return self._fallback(exclude)

    def _fallback(self, exclude: Iterable[Address]) -> Address | None:
        # everything is ejected: ignore ejection, still honour the per-request exclusions
        for candidate in self.addresses:
            if candidate not in exclude:
                return candidate
        return None

    def started(self, address: Address) -> None:
        """A request went to this endpoint (least_request counts these)."""

    def finished(self, address: Address) -> None:
        """A request to this endpoint ended."""


class LeastRequest(Balancer):
    __slots__ = ("_active",)

    counts_requests = True

    def __init__(self, endpoints: Iterable[Endpoint], health: Health) -> None:
        super().__init__(endpoints, health)
        self._active: dict[Address, int] = dict.fromkeys(self.addresses, 0)

    def pick(self, key: str | None, exclude: tuple[Address, ...] = ()) -> Address | None:
        addresses = self.addresses
        n = len(addresses)
        best: Address | None = None
        best_load = 0
        start = self._next
        for i in range(n):
            candidate = addresses[(start + i) % n]
            if not self._usable(candidate, exclude):
                continue
            load = self._active.get(candidate, 0)
            if best is None or load < best_load:
                best, best_load = candidate, load
        self._next = (start + 1) % n if n else 0
        return best if best is not None else self._fallback(exclude)

    def started(self, address: Address) -> None:
        self._active[address] = self._active.get(address, 0) + 1

    def finished(self, address: Address) -> None:
        if self._active.get(address, 0) > 0:
            self._active[address] -= 1


class HashRing(Balancer):
    __slots__ = ("_owners", "_points")

    def __init__(self, endpoints: Iterable[Endpoint], health: Health) -> None:
        super().__init__(endpoints, health)
        ring = sorted(
            (zlib.crc32(f"{ip}:{port}#{v}".encode()), (ip, port))
            for ip, port in self.addresses
            for v in range(_VNODES)
        )
        self._points = [p for p, _ in ring]
        self._owners = [o for _, o in ring]

    def pick(self, key: str | None, exclude: tuple[Address, ...] = ()) -> Address | None:
        if not self._points:
            return None
        if key is None:
            return super().pick(key, exclude)
        n = len(self._points)
        start = bisect.bisect(self._points, zlib.crc32(key.encode("utf-8", "surrogateescape")))
        # walk the ring clockwise to the first usable owner
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if self._usable(owner, exclude):
                return owner
        return self._fallback(exclude)


def hash_key(hash_by: str, remote: str, headers: list[tuple[bytes, bytes]], target: str) -> str | None:
    """The value ``Cluster.hash_by`` names for this request (None when the request lacks it)."""
    if hash_by == "$remote_addr":
        return remote
    if hash_by == "$request_uri":
        return target
    if hash_by.startswith("$http_"):
        wanted = hash_by[6:].replace("_", "-").lower().encode()
        for name, value in headers:
            if name.lower() == wanted:
                return value.decode("latin-1")
        return None
    if hash_by.startswith("$cookie_"):
        wanted_cookie = hash_by[8:]
        for name, value in headers:
            if name.lower() == b"cookie":
                for pair in value.decode("latin-1").split(";"):
                    k, _, v = pair.strip().partition("=")
                    if k == wanted_cookie:
                        return v
        return None
    # an unsupported expression hashes the literal: stable, if not useful
    return hash_by


class Clusters:
    """Balancers for every cluster of one (routing table, endpoint table) pair. Immutable as a whole."""

    __slots__ = ("_balancers", "clusters")

    def __init__(self, routing: RoutingTable, endpoints: EndpointTable, health: Health) -> None:
        self.clusters: dict[str, Cluster] = {c.name: c for c in routing.clusters}
        self._balancers: dict[str, Balancer] = {}
        for name, eps in endpoints.clusters.items():
            cluster = self.clusters.get(name)
            kind = cluster.balance if cluster is not None else "round_robin"
            cls = {"round_robin": Balancer, "least_request": LeastRequest, "hash": HashRing}[kind]
            self._balancers[name] = cls(eps, health)

    def balancer(self, cluster: str) -> Balancer | None:
        return self._balancers.get(cluster)
