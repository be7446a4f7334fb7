"""The userspace L4 data plane: TCP and UDP for nodePorts, external IPs and LoadBalancer IPs.

Used where kernel (netfilter) mode is unavailable. ``L4Proxy`` owns one listener per (protocol, ip, port)
the routing table asks for and relays each connection or UDP session to a ready endpoint of the port's
cluster: round robin, or ClientIP affinity (the same client IP keeps its endpoint while it keeps using it
within ``affinity_timeout_seconds``). An endpoint that refuses is ejected for a while (passive health,
shared with the L7 balancer's ``Health``) and the connection retries the next one.

Endpoints are read at connect time from the table installed last, so ``update`` swaps them atomically for
new connections while established ones carry on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from kubegate.ir.model import Endpoint, EndpointTable, L4Service, Protocol, RoutingTable
from kubegate.planes.proxy.balance import Health
from kubegate.planes.proxy.tcp import TcpOptions, serve_tcp
from kubegate.planes.proxy.udp import UdpListener, serve_udp

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class L4Settings:
    connect_timeout: float = 5.0
    # endpoints tried per TCP connection before the client is reset
    connect_attempts: int = 3
    tcp_idle_timeout: float = 3600.0
    udp_idle_timeout: float = 60.0
    # per-socket write buffer: above high the other side stops reading until below low
    write_buffer_high: int = 256 * 1024
    write_buffer_low: int = 64 * 1024
    eject_base: float = 1.0
    eject_max: float = 30.0
    # this node's name, for externalTrafficPolicy: Local (empty: the policy cannot apply; all endpoints)
    node_name: str = ""


class Listener(NamedTuple):
    protocol: Protocol
    ip: str
    port: int
    cluster: str
    service: str


BindKey = tuple[str, str, int]


def _key(listener: Listener) -> BindKey:
    return (listener.protocol, listener.ip, listener.port)


def _where(protocol: str, ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"{protocol} {host}:{port}"


def listeners(routing: RoutingTable, node_address: str) -> set[Listener]:
    """What to listen on: nodePorts on the node address, service ports on every LB and external IP."""
    wanted: set[Listener] = set()
    for svc in routing.services:
        if svc.type == "ExternalName":
            continue
        for p in svc.ports:
            if p.node_port and svc.type in ("NodePort", "LoadBalancer"):
                wanted.add(Listener(p.protocol, node_address, p.node_port, p.cluster, svc.name))
            for ip in (*svc.load_balancer_ips, *svc.external_ips):
                wanted.add(Listener(p.protocol, ip, p.port, p.cluster, svc.name))
    return wanted


class _Affinity:
    """ClientIP stickiness for one Service: client ip -> (endpoint, last used)."""

    __slots__ = ("_clock", "_entries", "_timeout")

    def __init__(self, timeout: float, clock: Callable[[], float]) -> None:
        self._timeout = timeout
        self._clock = clock
        self._entries: dict[str, tuple[Address, float]] = {}

    def get(self, client_ip: str) -> Address | None:
        entry = self._entries.get(client_ip)
        if entry is None:
            return None
        if self._clock() - entry[1] >= self._timeout:
            del self._entries[client_ip]
            return None
        return entry[0]

    def set(self, client_ip: str, address: Address) -> None:
        now = self._clock()
        if len(self._entries) >= 4096 and client_ip not in self._entries:
            # bound memory: forget the expired before adding
            self._entries = {ip: e for ip, e in self._entries.items() if now - e[1] < self._timeout}
        self._entries[client_ip] = (address, now)


class L4Proxy:
    def __init__(
        self,
        routing: RoutingTable,
        endpoints: EndpointTable,
        settings: L4Settings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or L4Settings()
        self._clock = clock
        self._health = Health(self.settings.eject_base, self.settings.eject_max, clock)
        self._routing = routing
        self._endpoints = endpoints
        self._services: dict[str, L4Service] = {s.name: s for s in routing.services}
        self._node_address = "0.0.0.0"
        self._started = False
        # what each bound socket currently serves (changes in place when a Service is edited)
        self._routes: dict[BindKey, Listener] = {}
        self._tcp: dict[BindKey, asyncio.Server] = {}
        self._udp: dict[BindKey, UdpListener] = {}
        # round robin position per cluster, kept across updates
        self._next: dict[str, int] = {}
        self._affinity: dict[str, _Affinity] = {}
        # (service name, message) for every listener that could not be opened
        self.errors: list[tuple[str, str]] = []

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self, node_address: str = "0.0.0.0") -> None:
        self._node_address = node_address
        self._started = True
        await self._reconcile()

    async def update(self, routing: RoutingTable, endpoints: EndpointTable) -> None:
        self._routing = routing
        self._endpoints = endpoints
        self._services = {s.name: s for s in routing.services}
        if self._started:  # before start, only remember the tables: start binds them
            await self._reconcile()

    async def close(self) -> None:
        """Stop listening. Established TCP connections are left to finish; UDP sessions end now."""
        servers = list(self._tcp.values())
        for server in servers:
            server.close()
        for udp in self._udp.values():
            udp.close()
        self._tcp.clear()
        self._udp.clear()
        self._routes.clear()
        self._started = False

    def bound(self) -> set[Listener]:
        """The listeners open right now."""
        return {r for k, r in self._routes.items() if k in self._tcp or k in self._udp}

    async def _reconcile(self) -> None:
        wanted: dict[BindKey, Listener] = {}
        errors: list[tuple[str, str]] = []
        # sorted so which of two Services claiming one address wins does not depend on set order
        for listener in sorted(listeners(self._routing, self._node_address)):
            key = _key(listener)
            other = wanted.get(key)
            if other is not None:
                if other.service != listener.service:
                    errors.append(
                        (listener.service, f"{_where(*key)} is already claimed by Service {other.service}")
                    )
                continue
            if listener.protocol == "SCTP":
                errors.append((listener.service, f"{_where(*key)}: SCTP is not supported in userspace mode"))
                continue
            wanted[key] = listener

        for key in [k for k in (*self._tcp, *self._udp) if k not in wanted]:
            self._close(key)
        # route changes for sockets that stay open apply to their next connection
        self._routes = {k: v for k, v in wanted.items() if k in self._tcp or k in self._udp}

        for key, listener in wanted.items():
            if key in self._tcp or key in self._udp:
                continue
            # routed before the socket exists, so its first connection already finds endpoints
            self._routes[key] = listener
            try:
                await self._open(key)
            except OSError as e:
                del self._routes[key]
                reason = e.strerror or str(e)
                errors.append((listener.service, f"cannot listen on {_where(*key)}: {reason}"))
        self.errors = errors
        for key, udp in self._udp.items():
            route = self._routes[key]
            udp.drop_sessions_not_to(set(self._candidates(route, self._services.get(route.service))))
        # forget affinity of Services that are gone or no longer sticky
        self._affinity = {
            name: a
            for name, a in self._affinity.items()
            if name in self._services and self._services[name].session_affinity == "ClientIP"
        }

    async def _open(self, key: BindKey) -> None:
        protocol, ip, port = key
        s = self.settings
        if protocol == "TCP":
            options = TcpOptions(
                connect_timeout=s.connect_timeout,
                connect_attempts=s.connect_attempts,
                idle_timeout=s.tcp_idle_timeout,
                write_buffer_high=s.write_buffer_high,
                write_buffer_low=s.write_buffer_low,
            )
            self._tcp[key] = await serve_tcp(
                ip, port, options, lambda c, tried: self._choose(key, c, tried), self._report
            )
        else:
            self._udp[key] = await serve_udp(
                ip, port, lambda c, tried: self._choose(key, c, tried), s.udp_idle_timeout
            )

    def _close(self, key: BindKey) -> None:
        server = self._tcp.pop(key, None)
        if server is not None:
            server.close()  # stops accepting; accepted connections are not touched
        udp = self._udp.pop(key, None)
        if udp is not None:
            udp.close()

    # -- balancing -----------------------------------------------------------------------------------

    def _candidates(self, listener: Listener, service: L4Service | None) -> tuple[Address, ...]:
        eps: tuple[Endpoint, ...] = self._endpoints.clusters.get(listener.cluster, ())
        node = self.settings.node_name
        if service is not None and service.external_traffic_policy == "Local" and node:
            eps = tuple(e for e in eps if e.node == node)
        return tuple((e.ip, e.port) for e in eps)

    def _choose(self, key: BindKey, client_ip: str, tried: tuple[Address, ...]) -> Address | None:
        listener = self._routes.get(key)
        if listener is None:
            return None
        service = self._services.get(listener.service)
        addresses = self._candidates(listener, service)
        if not addresses:
            return None
        affinity: _Affinity | None = None
        if service is not None and service.session_affinity == "ClientIP":
            affinity = self._affinity.get(service.name)
            if affinity is None:
                affinity = _Affinity(float(service.affinity_timeout_seconds), self._clock)
                self._affinity[service.name] = affinity
            sticky = affinity.get(client_ip)
            if sticky is not None and sticky in addresses and sticky not in tried:
                affinity.set(client_ip, sticky)
                return sticky
        chosen = self._round_robin(listener.cluster, addresses, tried)
        if chosen is not None and affinity is not None:
            affinity.set(client_ip, chosen)
        return chosen

    def _round_robin(
        self, cluster: str, addresses: tuple[Address, ...], tried: tuple[Address, ...]
    ) -> Address | None:
        n = len(addresses)
        start = self._next.get(cluster, 0)
        fallback: tuple[int, Address] | None = None
        for i in range(n):
            index = (start + i) % n
            candidate = addresses[index]
            if candidate in tried:
                continue
            if self._health.ejected(candidate):
                if fallback is None:
                    fallback = (index, candidate)
                continue
            self._next[cluster] = index + 1
            return candidate
        # all untried endpoints are ejected: try one anyway rather than refuse the client
        if fallback is not None:
            self._next[cluster] = fallback[0] + 1
            return fallback[1]
        return None

    def _report(self, address: Address, ok: bool) -> None:
        if ok:
            self._health.succeeded(address)
        else:
            self._health.failed(address)
