"""The public API of the built-in HTTP/1.1 data plane: ``ProxyServer`` listens (plain and TLS), routes
with the current compiled table (swapped atomically; requests in flight keep theirs) and hands each
accepted socket to a ``ClientConnection`` (planes/proxy/client.py), which does the proxying.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kubegate.ir.model import EndpointTable, RoutingTable
from kubegate.planes.proxy.balance import Address, Clusters, Health
from kubegate.planes.proxy.client import ClientConnection, Request, TlsClientConnection
from kubegate.planes.proxy.http import ProxySettings, TrustedNetworks
from kubegate.planes.proxy.pool import UpstreamPool
from kubegate.planes.proxy.router import Router
from kubegate.planes.proxy.tls import CertificateError, TlsContexts


@dataclass(frozen=True, slots=True)
class AccessRecord:
    client: str
    method: str
    path: str
    host: str
    status: int
    bytes: int
    duration: float
    upstream: str


AccessLog = Callable[[AccessRecord], None]


@dataclass(slots=True)
class ProxyStats:
    requests: int = 0
    connections: int = 0
    # the largest write buffer (plus bytes held for a not-yet-connected upstream) seen on any transport
    max_buffered: int = 0
    # TLS connections accepted whose handshake never completed (bad client hello, no common
    # protocol, handshake timeout, a client that hung up): asyncio drops them without telling the protocol
    tls_handshake_failures: int = 0
    status_counts: dict[int, int] = field(default_factory=dict)


class Published:
    """One version of what requests are routed by; a request keeps the one it started with."""

    __slots__ = ("clusters", "router")

    def __init__(self, router: Router, clusters: Clusters) -> None:
        self.router = router
        self.clusters = clusters


class ProxyServer:
    """The built-in HTTP/1.1 proxy. Swap tables with update_routing/update_endpoints at any time."""

    def __init__(
        self,
        routing: RoutingTable,
        endpoints: EndpointTable,
        settings: ProxySettings | None = None,
        access_log: AccessLog | None = None,
        scheme: str = "http",
    ) -> None:
        self.settings = settings or ProxySettings()
        self.access_log = access_log
        self.scheme = scheme.encode("ascii")
        self.health = Health(self.settings.ejection_base, self.settings.ejection_max)
        self.pool = UpstreamPool(self.settings.upstream_max_idle, self.settings.upstream_idle_timeout)
        self.trusted = TrustedNetworks(self.settings.trusted_proxies)
        self.stats = ProxyStats()
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.errors: list[BaseException] = []
        self._routing = routing
        self._endpoints = endpoints
        self._router = Router(routing)
        self.published = Published(self._router, Clusters(routing, endpoints, self.health))
        self._servers: list[asyncio.AbstractServer] = []
        # created by the first start_tls; None keeps plain-HTTP-only servers free of TLS work
        self.tls: TlsContexts | None = None
        # the port plain-HTTP requests are redirected to (ssl-redirect): the first TLS listener's port
        # unless set; 443 is left out of the Location
        self.https_redirect_port = 443
        self._https_port_set = False

    # --- tables -----------------------------------------------------------------------------------
    def update_routing(self, table: RoutingTable) -> None:
        """Compile and publish a new routing table; requests in flight keep the old one."""
        router = Router(table)
        self._routing = table
        self._router = router
        self.published = Published(router, Clusters(table, self._endpoints, self.health))
        if self.tls is not None:
            self.tls.update(table)

    @property
    def tls_errors(self) -> tuple[CertificateError, ...]:
        """Certificates of the current table that could not be loaded (their hosts get the default)."""
        return self.tls.errors if self.tls is not None else ()

    def update_endpoints(self, table: EndpointTable) -> None:
        self._endpoints = table
        self.published = Published(self._router, Clusters(self._routing, table, self.health))

    # --- listening --------------------------------------------------------------------------------
    async def start(self, host: str, port: int, reuse_port: bool = False) -> tuple[str, int]:
        """Listen; returns the bound (host, port), useful with port 0."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_port=reuse_port or None, backlog=1024
        )
        self._servers.append(server)
        sock: socket.socket = server.sockets[0]
        bound = sock.getsockname()
        return bound[0], bound[1]

    async def start_tls(
        self, host: str, port: int, reuse_port: bool = False, handshake_timeout: float = 10.0
    ) -> tuple[str, int]:
        """Listen for HTTPS, certificates chosen by SNI from the routing table; returns (host, port).

        A failed handshake never reaches the proxy: asyncio drops the connection (logging it only with the
        loop in debug mode); it is counted in stats.tls_handshake_failures.
        """
        if self.tls is None:
            self.tls = TlsContexts(self._routing)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: TlsClientConnection(self),
            host,
            port,
            reuse_port=reuse_port or None,
            backlog=1024,
            ssl=self.tls.default,
            ssl_handshake_timeout=handshake_timeout,
        )
        self._servers.append(server)
        sock: socket.socket = server.sockets[0]
        bound = sock.getsockname()
        if not self._https_port_set:
            self.set_https_redirect_port(bound[1])
        return bound[0], bound[1]

    def set_https_redirect_port(self, port: int) -> None:
        """Where ssl-redirect points when clients reach the TLS listener on another port (NAT, NodePort)."""
        self.https_redirect_port = port
        self._https_port_set = True

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, let requests in flight finish (up to drain_timeout), then close the rest."""
        self.draining = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.idle():
                conn.close()
        deadline = time.monotonic() + drain_timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self.pool.close_all()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    # --- bookkeeping ------------------------------------------------------------------------------
    def record(self, conn: ClientConnection, req: Request, upstream: Address | None) -> None:
        """Count a finished request and hand it to the access log (upstream: the endpoint it went to)."""
        stats = self.stats
        stats.requests += 1
        status = conn.resp_status
        stats.status_counts[status] = stats.status_counts.get(status, 0) + 1
        if self.access_log is not None:
            self.access_log(
                AccessRecord(
                    client=conn.peer,
                    method=req.method,
                    path=req.target.decode("latin-1"),
                    host=req.host,
                    status=status,
                    bytes=conn.resp_bytes,
                    duration=time.monotonic() - req.started,
                    upstream=_label(upstream) if upstream is not None else "",
                )
            )

    def report_error(self, exc: BaseException) -> None:
        if len(self.errors) < 100:
            self.errors.append(exc)


_LABELS: dict[Address, str] = {}


def _label(address: Address) -> str:
    """ "host:port" for the access log, built once per endpoint rather than per request."""
    label = _LABELS.get(address)
    if label is None:
        label = f"{address[0]}:{address[1]}"
        if len(_LABELS) >= 4096:
            _LABELS.clear()
        _LABELS[address] = label
    return label
