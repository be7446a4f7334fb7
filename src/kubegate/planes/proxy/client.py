"""The client side of the built-in HTTP/1.1 data plane: one ``ClientConnection`` per accepted socket.

It parses requests with httptools and proxies them one at a time, in order (pipelined requests wait their
turn, with reading paused), driven by callbacks rather than a task per request. Bodies in both directions
go through as they arrive, with back-pressure: when one side's write buffer passes the high-water mark the
other side's reading is paused until it drains, so memory stays bounded by a few buffers per connection.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from kubegate.ir.model import Backend
from kubegate.planes.proxy.balance import Address, Balancer, hash_key
from kubegate.planes.proxy.forward import ResponseHead, UpstreamConnection, connect
from kubegate.planes.proxy.http import (
    CONTINUE_100,
    FORWARDING,
    HOP_BY_HOP,
    connection_value_tokens,
    error_response,
    last_chunk,
    status_line,
)
from kubegate.planes.proxy.router import BadPath, Match, normalize_host

if TYPE_CHECKING:
    from kubegate.planes.proxy.server import ProxyServer, Published


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Connection tokens that name no header we would forward anyway
_DROPPED_ANYWAY = HOP_BY_HOP | {b"close"}


class _NoParser:
    """Stands in for the request parser until a connection is made."""

    def feed_data(self, data: bytes) -> None:
        raise RuntimeError("no connection yet")


_NO_PARSER = cast(httptools.HttpRequestParser, _NoParser())

# headers that ClientConnection._control_header reads or replaces; all others are forwarded as they came
_CONTROL_HEADERS = HOP_BY_HOP | FORWARDING | {b"host", b"content-length", b"expect"}
# never removed because a Connection header names them: the framing and the routing are the proxy's
_NEVER_DROPPED = frozenset({b"host", b"content-length", b"transfer-encoding"})


def _without(lines: list[bytes], names: set[bytes]) -> list[bytes]:
    """Header lines (four parts each: name, ": ", value, CRLF) without those whose name is in names."""
    kept: list[bytes] = []
    for i in range(0, len(lines), 4):
        if lines[i].lower() not in names:
            kept += lines[i : i + 4]
    return kept


class Request:
    """One request as parsed and as it is being proxied (also what the access log reads)."""

    __slots__ = (
        "body_done",
        "body_limit",
        "body_received",
        "chunked",
        "content_length",
        "error",
        "expect_continue",
        "headers",
        "host",
        "host_raw",
        "hosts",
        "incoming",
        "keep_alive",
        "lines",
        "match",
        "method",
        "pending",
        "pending_size",
        "published",
        "started",
        "target",
        "tokens",
        "trailers",
        "upgrade",
        "version",
    )

    def __init__(self, published: Published) -> None:
        self.published = published
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        # sorted while the headers are parsed: end-to-end lines to forward (name, b": ", value, b"\r\n"
        # each; Host and hop-by-hop ones left out), the Host header(s), the forwarding headers of a
        # trusted peer, and the tokens of Connection headers beyond keep-alive/close
        self.lines: list[bytes] = []
        self.hosts = 0
        self.host_raw: bytes | None = None
        self.incoming: dict[bytes, bytes] | None = None
        self.tokens: set[bytes] | None = None
        self.method = "GET"
        self.version = "1.1"
        self.host = ""
        self.keep_alive = True
        self.upgrade: bytes | None = None
        self.chunked = False
        self.content_length = 0
        self.expect_continue = False
        self.error: tuple[int, str] | None = None
        self.match: Match | None = None
        self.body_limit = 0
        self.body_received = 0
        self.body_done = False
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.started = time.monotonic()


_PAUSE_UPSTREAM_FULL = 1
_PAUSE_PENDING = 2
_PAUSE_QUEUE = 4


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing a request whose head passed the limits."""


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: ProxyServer, tls: bool = False) -> None:
        self.server = server
        self.settings = server.settings
        # the TLS listener's connections: X-Forwarded-Proto https, and never redirected to https
        self.tls = tls
        self.scheme = b"https" if tls else server.scheme
        self.hsts = self.settings.hsts.encode("latin-1") if tls else b""
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.local_port = 0
        # made in connection_made: the parser refers back to this protocol, and a TLS connection whose
        # handshake fails never gets there, so it must be freed at once, without a reference cycle
        self.parser: httptools.HttpRequestParser = _NO_PARSER
        self.parsing: Request | None = None
        self.active: Request | None = None
        self.to_start: Request | None = None
        self.queue: deque[Request] = deque()
        self.header_bytes = 0
        self.head_too_large = False
        self.broken = False
        self.closed = False
        self.paused = 0
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: float | None = None
        self.in_headers = False
        # reading a request body: the client-body timeout applies
        self.in_body = False
        # the exchange in progress
        self.upstream: UpstreamConnection | None = None
        self.forwarding = False
        self.waiting = False
        self.ex_address: Address = ("", 0)
        self.ex_reused = False
        self.ex_balancer: Balancer | None = None
        self.ex_candidates: Address | None = None
        self.ex_key: str | None = None
        self.ex_head = b""
        self.ex_tried: list[Address] = []
        self.ex_failure = (502, "")
        self.ex_attempts = 0
        self.resp_started = False
        self.resp_chunked = False
        self.resp_status = 0
        self.resp_bytes = 0
        self.resp_keep_alive = True
        self.resp_head: bytes | None = None
        self.tunnel = False
        self.tunnel_pending: list[bytes] = []
        self.upgrading = False
        # the X-Forwarded-* lines around the host for requests carrying none we believe, built for
        # fwd_peer (the peer is fixed per connection, but set after construction)
        self.fwd_peer: str | None = None
        # whether the peer is a trusted proxy whose X-Forwarded-* headers we extend (set when connected)
        self.from_trusted = False
        self.fwd_prefix = b""
        self.fwd_suffix = b""

    # --- connection -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)
        transport.set_write_buffer_limits(high=self.settings.write_buffer_high)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "unix"
        sock = transport.get_extra_info("sockname")
        self.local_port = sock[1] if isinstance(sock, tuple) else 0
        server = self.server
        self.from_trusted = self.peer in server.trusted
        if len(server.connections) >= self.settings.max_connections:
            transport.write(error_response(503, "too many connections", close=True))
            transport.close()
            self.closed = True
            return
        server.connections.add(self)
        server.stats.connections += 1
        self._arm(self.settings.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.waiting:
            self._outcome(False, reason="client went away")
        elif self.upstream is not None:
            self.upstream.abort()
            self.upstream = None

    def idle(self) -> bool:
        return self.active is None and not self.in_headers

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    # Timers are lazy: arming only moves a deadline; the scheduled handle is replaced only when the
    # new deadline is earlier than it. A handle that fires early re-arms for the current deadline.
    # This saves creating and cancelling two timer handles per request on keep-alive connections.
    def _arm(self, timeout: float) -> None:
        deadline = self.loop.time() + timeout
        self.deadline = deadline
        timer = self.timer
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self.timer = self.loop.call_at(deadline, self._timed_out)

    def _disarm(self) -> None:
        self.deadline = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.transport is None or self.closed or self.deadline is None:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._timed_out)
            return
        if self.in_body:
            if self.paused:
                # not reading because the upstream or the queue is full: not the client's fault
                self._arm(self.settings.client_body_timeout)
                return
            self.in_body = False
            self._malformed("client body timeout", 408)
            return
        if self.in_headers:
            self.transport.write(error_response(408, "request header timeout", close=True))
        self.close()

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            if self.upstream is not None:
                self.upstream.write(data)
            return
        if self.upgrading:
            self.tunnel_pending.append(data)
            return
        if self.broken:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self.upgrading = True
            if offset < len(data):
                self.tunnel_pending.append(data[offset:])
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadersTooLarge) or self.head_too_large:
                self._malformed("request header fields too large", 431)
            else:
                self._malformed(f"malformed request: {exc}")
        req = self.to_start
        if req is not None:
            # started once the whole read is parsed, so a body in the same read is already in
            self.to_start = None
            self._start(req)

    def _malformed(self, message: str, status: int = 400) -> None:
        self.broken = True
        self.in_body = False
        req = self.parsing
        if req is not None and (req is self.active or req in self.queue):
            # the request is already queued or being proxied: never let its rest reach the upstream;
            # answer with the error if nothing went out yet
            req.error = (status, message)
            req.keep_alive = False
            if req is self.active:
                self.resp_keep_alive = False
                self._outcome(False, reason=message)
            return
        failed = Request(self.server.published)
        failed.error = (status, message)
        failed.keep_alive = False
        self._enqueue(failed)

    # --- parser callbacks -------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = Request(self.server.published)
        self.header_bytes = 0
        self.in_headers = True
        self._arm(self.settings.header_timeout)

    def on_url(self, url: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.target += url
        self.header_bytes += len(url)
        if self.header_bytes > self.settings.max_header_bytes:
            # stop here rather than hold an unbounded head in memory
            self.head_too_large = True
            raise _HeadersTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.parsing
        assert req is not None
        self.header_bytes += len(name) + len(value) + 4
        if not self.in_headers:
            # a trailer field of a chunked body: forwarded after the last chunk, within the same limits
            if req.trailers is None:
                req.trailers = []
            req.trailers.append((name, value))
            if (
                self.header_bytes > self.settings.max_header_bytes
                or len(req.trailers) > self.settings.max_headers
            ):
                self.head_too_large = True
                raise _HeadersTooLarge
            return
        req.headers.append((name, value))
        if self.header_bytes > self.settings.max_header_bytes or len(req.headers) > self.settings.max_headers:
            self.head_too_large = True
            raise _HeadersTooLarge
        lname = name.lower()
        if lname in _CONTROL_HEADERS:
            self._control_header(req, lname, name, value)
        else:
            req.lines += (name, b": ", value, b"\r\n")

    def _control_header(self, req: Request, lname: bytes, name: bytes, value: bytes) -> None:
        """A header the proxy reads or replaces instead of passing it on as it is."""
        if lname == b"host":
            req.hosts += 1
            req.host_raw = value
        elif lname == b"content-length":
            # llhttp has checked the digits; forwarded as is (the body is relayed byte for byte)
            req.content_length = int(value)
            req.lines += (name, b": ", value, b"\r\n")
        elif lname in FORWARDING:
            # believed only from a trusted proxy, else replaced by what we know; repeats are joined
            if self.from_trusted:
                incoming = req.incoming
                if incoming is None:
                    incoming = req.incoming = {}
                previous = incoming.get(lname)
                incoming[lname] = value if previous is None else previous + b", " + value
        elif lname == b"expect":
            if value.lower() == b"100-continue":
                req.expect_continue = True
        elif lname == b"transfer-encoding":
            req.chunked = True
        elif lname == b"upgrade":
            req.upgrade = value
        elif lname == b"connection":
            tokens = connection_value_tokens(value)
            if tokens:
                req.tokens = tokens if req.tokens is None else req.tokens | tokens
        # the other hop-by-hop headers (keep-alive, te, trailer, proxy-connection) end here

    def on_headers_complete(self) -> None:
        req = self.parsing
        assert req is not None
        self.in_headers = False
        self._disarm()
        parser = self.parser
        req.method = parser.get_method().decode("ascii", "replace")
        req.version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        settings = self.settings
        if self.header_bytes > settings.max_header_bytes or len(req.headers) > settings.max_headers:
            req.error = (431, "request header fields too large")
        else:
            self._inspect(req)
        if req.error is not None:
            req.keep_alive = False
            self.broken = True
        elif req.content_length or req.chunked:
            self.in_body = True
            self._arm(settings.client_body_timeout)
        self._enqueue(req)

    def _inspect(self, req: Request) -> None:
        if req.upgrade is not None and not self.parser.should_upgrade():
            req.upgrade = None
        if req.version not in ("1.1", "1.0"):
            req.error = (400, f"unsupported HTTP version {req.version}")
            return
        hosts = req.hosts
        if hosts > 1 or (hosts == 0 and req.version == "1.1"):
            req.error = (400, "exactly one Host header is required")
            return
        if req.host_raw is not None:
            req.host = req.host_raw.decode("latin-1")
        try:
            req.match = req.published.router.match(req.host, req.target.decode("latin-1"))
        except BadPath as exc:
            req.error = (400, str(exc))
            return
        route = req.match.route if req.match is not None else None
        limit = route.options.max_body_size if route is not None else None
        req.body_limit = self.settings.max_body_size if limit is None else limit
        if req.body_limit and req.content_length > req.body_limit:
            req.error = (413, "request body too large")

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        assert req is not None
        req.body_received += len(body)
        if self.in_body:
            self._arm(self.settings.client_body_timeout)
        if req.body_limit and req.body_received > req.body_limit:
            self._malformed("request body too large", 413)
            return
        if req is self.active and self.forwarding and self.upstream is not None:
            upstream = self.upstream
            upstream.write(b"%x\r\n%b\r\n" % (len(body), body) if req.chunked else body)
            buffered = upstream.buffered()
            self.server.stats.max_buffered = max(self.server.stats.max_buffered, buffered)
            return
        req.pending.append(body)
        req.pending_size += len(body)
        self.server.stats.max_buffered = max(self.server.stats.max_buffered, req.pending_size)
        if req.pending_size > self.settings.write_buffer_high:
            self._pause(_PAUSE_PENDING)

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        req.body_done = True
        self.parsing = None
        if self.in_body:
            self.in_body = False
            self._disarm()
        if req is self.active and self.forwarding and self.upstream is not None and req.chunked:
            self.upstream.write(last_chunk(req.trailers))

    # --- request queue ----------------------------------------------------------------------------
    def _enqueue(self, req: Request) -> None:
        if self.active is None:
            self.active = req
            # always called while data_received parses: it starts the request when the read is done
            # (no call_soon handle and loop iteration per request)
            self.to_start = req
        else:
            self.queue.append(req)
            self._pause(_PAUSE_QUEUE)

    def _finished(self, keep_alive: bool) -> None:
        self.active = None
        if self.closed:
            return
        if not keep_alive or self.server.draining:
            self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            if not self.queue:
                self._resume(_PAUSE_QUEUE)
            self.active = nxt
            self.loop.call_soon(self._start, nxt)
        else:
            if self.paused:
                self._resume(_PAUSE_QUEUE)
            if not self.in_headers:
                self._arm(self.settings.keepalive_timeout)

    # --- one exchange -----------------------------------------------------------------------------
    # Driven by callbacks, not a task per request: the common keep-alive case (pooled upstream
    # connection) runs start to finish without a coroutine, a future or a task. Only opening a new
    # upstream connection runs as a task (_connect). Each attempt ends in exactly one _outcome().
    def _send_error(self, req: Request, status: int, message: str, close: bool) -> None:
        if self.transport is not None and not self.closed:
            data = error_response(status, message, close=close, head=req.method == "HEAD")
            self.transport.write(data)
            self.resp_bytes = len(data)
        self.resp_started = True
        self.resp_status = status

    def _start(self, req: Request) -> None:
        if self.closed:
            self.active = None
            return
        self.resp_started = False
        self.resp_head = None
        self.resp_bytes = 0
        self.resp_status = 0
        self.resp_keep_alive = req.keep_alive
        try:
            self._begin(req)
        except Exception as exc:  # a bug must cost one request, never the server
            self._crashed(req, exc)

    def _crashed(self, req: Request, exc: Exception) -> None:
        self.server.report_error(exc)
        if self.upstream is not None:
            self.upstream.abort()
            self.upstream = None
        self.waiting = False
        if not self.resp_started:
            self._send_error(req, 500, "internal error", True)
        self.resp_keep_alive = False
        self._complete(req, None)

    def _begin(self, req: Request) -> None:
        if req.error is not None:
            self._complete(req, None)
            return
        match = req.match
        if match is None:
            self._send_error(req, 404, "no route for this host and path", not req.keep_alive)
            self._complete(req, None)
            return
        route = match.route
        if route is not None:
            options = route.options
            if (options.ssl_redirect or options.force_ssl_redirect or options.app_root) and self._redirected(
                req, match
            ):
                return
        backend = _choose_backend(match.backend_choices)
        clusters = req.published.clusters
        balancer = clusters.balancer(backend.cluster)
        cluster = clusters.clusters.get(backend.cluster)
        self.ex_candidates = None
        if balancer is None and cluster is not None and cluster.external_name:
            self.ex_candidates = (cluster.external_name, cluster.port)
        if (balancer is None and self.ex_candidates is None) or (
            balancer is not None and not balancer.addresses
        ):
            self._send_error(req, 503, "no ready endpoint for this service", not req.keep_alive)
            self._complete(req, None)
            return
        key = None
        if cluster is not None and cluster.balance == "hash" and cluster.hash_by:
            key = hash_key(cluster.hash_by, self.peer, req.headers, req.target.decode("latin-1"))
        self.ex_balancer = balancer
        self.ex_key = key
        self.ex_head = self._request_head(req, match)
        self.ex_tried = []
        self.ex_failure = (502, "could not connect to the upstream")
        self.ex_attempts = self.settings.retries + 1
        self._attempt(req)

    def _redirected(self, req: Request, match: Match) -> bool:
        """Answer app-root and ssl-redirect routes the way ingress-nginx does; False to proxy instead."""
        route = match.route
        assert route is not None
        options = route.options
        host = req.host
        if not host:
            return False  # an HTTP/1.0 request without Host: nowhere to redirect to
        # app-root (nginx rewrite phase) comes before the ssl redirect (rewrite_by_lua, after it)
        if options.app_root and req.target.split(b"?", 1)[0] == b"/":
            root = options.app_root.encode("latin-1")
            location = b"%b://%b%b" % (self.scheme, host.encode("latin-1"), root)
            self._send_redirect(req, 302, location)
            return True
        if self.tls:
            return False
        # the automatic redirect needs somewhere to go: a certificate for the host and a TLS listener
        # here (force-ssl-redirect is the user's explicit wish and is honoured regardless)
        has_tls = (
            match.vhost is not None
            and match.vhost.tls_certificate is not None
            and self.server.tls is not None
        )
        if options.force_ssl_redirect or (options.ssl_redirect and has_tls):
            port = self.server.https_redirect_port
            authority = normalize_host(host) + ("" if port == 443 else f":{port}")
            self._send_redirect(req, 308, b"https://%b%b" % (authority.encode("latin-1"), req.target))
            return True
        return False

    def _send_redirect(self, req: Request, status: int, location: bytes) -> None:
        close = not req.keep_alive or not req.body_done
        parts = [
            status_line(status),
            b"Server: kubegate\r\nLocation: ",
            location,
            b"\r\nContent-Length: 0\r\n",
            b"Connection: close\r\n\r\n" if close else b"\r\n",
        ]
        data = b"".join(parts)
        if self.transport is not None and not self.closed:
            self.transport.write(data)
        self.resp_bytes = len(data)
        self.resp_started = True
        self.resp_status = status
        if close:
            self.resp_keep_alive = False
        self._complete(req, None)

    def _attempt(self, req: Request) -> None:
        pool = self.server.pool
        while self.ex_attempts > 0:
            self.ex_attempts -= 1
            address: Address | None
            if self.ex_candidates is not None:
                address = None if self.ex_tried else self.ex_candidates
            else:
                assert self.ex_balancer is not None
                tried = self.ex_tried
                address = self.ex_balancer.pick(self.ex_key, tuple(tried) if tried else ())
            if address is None:
                break
            conn = pool.take(address)
            if conn is None:
                self.loop.create_task(self._connect(req, address))
                return
            self.ex_attempts += 1  # a stale pooled connection does not use up a retry
            self._send(req, conn, address, True)
            return
        self._send_error(req, self.ex_failure[0], self.ex_failure[1], not req.keep_alive)
        tried = self.ex_tried
        self._complete(req, tried[-1] if tried else None)

    async def _connect(self, req: Request, address: Address) -> None:
        settings = self.settings
        health = self.server.health
        try:
            try:
                conn = await connect(address, settings.connect_timeout, settings.write_buffer_high)
            except (OSError, TimeoutError) as exc:
                self.ex_tried.append(address)
                health.failed(address)
                if isinstance(exc, TimeoutError):
                    self.ex_failure = (504, "upstream connect timed out")
                if self.closed or req.error is not None:
                    self._complete(req, None)
                else:
                    self._attempt(req)
                return
            self.server.pool.count_open(address)
            health.succeeded(address)
            if self.closed or req.error is not None:
                conn.close()
                self._complete(req, None)
                return
            self._send(req, conn, address, False)
        except Exception as exc:
            self._crashed(req, exc)

    def _send(self, req: Request, conn: UpstreamConnection, address: Address, reused: bool) -> None:
        """Send the request; the response streams through the ResponseSink callbacks."""
        self.ex_address = address
        self.ex_reused = reused
        balancer = self.ex_balancer
        if balancer is not None and balancer.counts_requests:
            balancer.started(address)
        self.upstream = conn
        self.waiting = True
        conn.begin(self, req.method == "HEAD", self.settings.upstream_read_timeout)
        conn.write(self.ex_head)
        if req.expect_continue and not req.body_done and req.version == "1.1" and self.transport is not None:
            self.transport.write(CONTINUE_100)
        if req.pending:
            body = b"".join(req.pending)
            req.pending.clear()
            req.pending_size = 0
            conn.write(b"%x\r\n%b\r\n" % (len(body), body) if req.chunked and body else body)
            self._resume(_PAUSE_PENDING)
        if req.body_done and req.chunked:
            conn.write(last_chunk(req.trailers))
        self.forwarding = True

    def _outcome(self, ok: bool, keep_alive: bool = False, reason: str = "", timeout: bool = False) -> None:
        """The end of one attempt: finish the exchange, or retry it on another connection."""
        if not self.waiting:
            return
        self.waiting = False
        req = self.active
        conn = self.upstream
        address = self.ex_address
        self.upstream = None
        self.forwarding = False
        if req is None:
            if conn is not None:
                conn.abort()
            return
        try:
            balancer = self.ex_balancer
            if balancer is not None and balancer.counts_requests:
                balancer.finished(address)
            if ok:
                if conn is not None:
                    if keep_alive and req.body_done:
                        self.server.pool.put(address, conn)  # closes it instead when it is not usable
                    else:
                        conn.close()
                self._complete(req, address)
                return
            if conn is not None:
                conn.abort()
            if req.error is not None:
                self._complete(req, None)
                return
            if self.closed or self.resp_started:
                self.resp_keep_alive = False
                self._complete(req, address)
                return
            retryable = req.method in IDEMPOTENT and req.body_received == 0 and not req.chunked
            if timeout:
                self.ex_failure = (504, "upstream timed out")
                retryable = False
            else:
                self.ex_failure = (502, "upstream failed: " + reason)
            if not retryable:
                self._send_error(req, self.ex_failure[0], self.ex_failure[1], not req.keep_alive)
                self._complete(req, address)
                return
            if not self.ex_reused:
                self.ex_tried.append(address)
            self._attempt(req)
        except Exception as exc:
            self._crashed(req, exc)

    def _complete(self, req: Request, upstream: Address | None) -> None:
        self.upstream = None
        self.forwarding = False
        if self.paused:
            self._resume(_PAUSE_UPSTREAM_FULL | _PAUSE_PENDING)
        if req.error is not None and not self.resp_started:
            self._send_error(req, req.error[0], req.error[1], True)
            self.resp_keep_alive = False
        if req.error is not None or not req.body_done:
            # the rest of the request body cannot be told apart from a next request
            self.resp_keep_alive = False
        self.server.record(self, req, upstream)
        self._finished(self.resp_keep_alive)

    def _request_head(self, req: Request, match: Match) -> bytes:
        """The upstream request head: the client's end-to-end headers, our Host, forwarding and framing."""
        target = match.rewritten.encode("latin-1") if match.rewritten is not None else req.target
        route = match.route
        vhost_override = route.options.upstream_vhost if route is not None else None
        if vhost_override:
            host = vhost_override.encode("latin-1")
        else:
            # an HTTP/1.0 request may come without Host; HTTP/1.1 upstreams need one
            host = req.host_raw if req.host_raw is not None else b"localhost"
        lines = req.lines
        incoming = req.incoming
        tokens = req.tokens
        if tokens is not None and not tokens <= _DROPPED_ANYWAY:
            # Connection names other headers: leave them out (rare; the usual tokens are keep-alive and
            # close). Framing and routing stay ours whatever it names.
            named = tokens - _NEVER_DROPPED
            lines = _without(lines, named)
            if incoming is not None:
                incoming = {k: v for k, v in incoming.items() if k not in named}
        parts = [req.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n", *lines]
        if incoming:
            parts.append(self._trusted_forwarding(req, incoming))
        else:
            # nothing believed from the client: the lines depend on the connection and the host only
            if self.fwd_peer is not self.peer:
                peer = self.peer.encode("latin-1")
                self.fwd_prefix = (
                    b"X-Forwarded-For: %b\r\nX-Real-IP: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: "
                    % (peer, self.server.trusted.real_client(self.peer, None).encode("latin-1"), self.scheme)
                )
                self.fwd_suffix = b"\r\nX-Forwarded-Port: %d\r\n" % self.local_port
                self.fwd_peer = self.peer
            parts += (self.fwd_prefix, req.host.encode("latin-1"), self.fwd_suffix)
        if req.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if req.upgrade is not None:
            parts += (b"Connection: upgrade\r\nUpgrade: ", req.upgrade, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _trusted_forwarding(self, req: Request, incoming: dict[bytes, bytes]) -> bytes:
        """The X-Forwarded-* lines extending what a trusted proxy told us."""
        trusted = self.server.trusted
        peer = self.peer.encode("latin-1")
        xff = incoming.get(b"x-forwarded-for")
        parts = [b"X-Forwarded-For: ", xff + b", " + peer if xff else peer, b"\r\n"]
        parts += (b"X-Real-IP: ", trusted.real_client(self.peer, xff).encode("latin-1"), b"\r\n")
        parts += (b"X-Forwarded-Proto: ", incoming.get(b"x-forwarded-proto", self.scheme), b"\r\n")
        parts += (
            b"X-Forwarded-Host: ",
            incoming.get(b"x-forwarded-host", req.host.encode("latin-1")),
            b"\r\n",
        )
        port = incoming.get(b"x-forwarded-port", b"%d" % self.local_port)
        parts += (b"X-Forwarded-Port: ", port, b"\r\n")
        return b"".join(parts)

    # --- ResponseSink: called by the upstream connection --------------------------------------------
    def upstream_headers(self, status: int, head: ResponseHead, until_close: bool) -> None:
        req = self.active
        transport = self.transport
        if req is None or transport is None or self.closed:
            return
        self.resp_status = status
        tokens = head.tokens
        if tokens is not None and not tokens <= _DROPPED_ANYWAY:
            head = head.without(tokens)
        parts = [status_line(status), *head.lines]
        if self.hsts and not head.hsts and _has_own_certificate(req.match):
            parts += (b"Strict-Transport-Security: ", self.hsts, b"\r\n")
        no_body = req.method == "HEAD" or status in (204, 304) or 100 <= status < 200
        self.resp_chunked = False
        if status == 101:
            parts += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
        else:
            if req.upgrade is not None:
                self.resp_keep_alive = False  # the client's parser is in upgrade state
            if not no_body and not head.has_length:
                if req.version == "1.1":
                    self.resp_chunked = True
                    parts.append(b"Transfer-Encoding: chunked\r\n")
                else:
                    self.resp_keep_alive = False
            if self.server.draining or not req.body_done:
                self.resp_keep_alive = False
            if not self.resp_keep_alive:
                parts.append(b"Connection: close\r\n")
            elif req.version == "1.0":
                parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        data = b"".join(parts)
        self.resp_started = True
        self.resp_bytes += len(data)
        if no_body or status == 101:
            transport.write(data)
        else:
            # held back so the head and the first body bytes (usually parsed from the same read)
            # leave in one write: one syscall less per response
            self.resp_head = data

    def upstream_body(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        self.resp_bytes += len(data)
        framed = b"%x\r\n%b\r\n" % (len(data), data) if self.resp_chunked else data
        head = self.resp_head
        if head is not None:
            self.resp_head = None
            framed = head + framed
        transport.write(framed)
        buffered = transport.get_write_buffer_size()
        stats = self.server.stats
        stats.max_buffered = max(stats.max_buffered, buffered)

    def upstream_complete(self, keep_alive: bool, trailers: list[tuple[bytes, bytes]] | None) -> None:
        if self.resp_head is not None:
            self._flush_head()
        if self.resp_chunked and self.transport is not None and not self.closed:
            end = last_chunk(trailers)
            self.transport.write(end)
            self.resp_bytes += len(end)
        self._outcome(True, keep_alive)

    def upstream_flush(self) -> None:
        if self.resp_head is not None:
            self._flush_head()

    def _flush_head(self) -> None:
        head = self.resp_head
        if head is not None:
            self.resp_head = None
            if self.transport is not None and not self.closed:
                self.transport.write(head)

    def upstream_failed(self, reason: str, timeout: bool) -> None:
        self._flush_head()
        self._outcome(False, reason=reason, timeout=timeout)

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            self._resume(_PAUSE_UPSTREAM_FULL)
        else:
            self._pause(_PAUSE_UPSTREAM_FULL)

    def upstream_upgraded(self, rest: bytes) -> None:
        self._flush_head()
        self.tunnel = True
        self.upgrading = False
        self.resp_keep_alive = False
        if rest and self.transport is not None:
            self.transport.write(rest)
        if self.upstream is not None:
            for chunk in self.tunnel_pending:
                self.upstream.write(chunk)
        self.tunnel_pending.clear()

    def upstream_tunnel_data(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def eof_received(self) -> bool | None:
        if self.tunnel and self.upstream is not None and self.upstream.transport is not None:
            if self.upstream.transport.can_write_eof():
                self.upstream.transport.write_eof()
            return True
        return None


class TlsClientConnection(ClientConnection):
    """A connection on a TLS listener. The loop creates the protocol when it accepts the socket and calls
    connection_made only after the handshake; a failed handshake just drops the protocol. Dropping one
    that never got its transport is how a failed handshake is counted (at once: until connection_made
    the protocol is in no reference cycle, so reference counting frees it)."""

    def __init__(self, server: ProxyServer) -> None:
        super().__init__(server, tls=True)

    def __del__(self) -> None:
        if self.transport is None:
            self.server.stats.tls_handshake_failures += 1


def _has_own_certificate(match: Match | None) -> bool:
    """HSTS goes only on responses for hosts served with their own certificate, not the generated
    default one (pinning a browser to a certificate it will reject would lock users out)."""
    return match is not None and match.vhost is not None and match.vhost.tls_certificate is not None


def _choose_backend(choices: tuple[Backend, ...]) -> Backend:
    if len(choices) == 1:
        return choices[0]
    total = sum(b.weight for b in choices)
    if total <= 0:
        return choices[0]
    point = random.random() * total
    for b in choices:
        point -= b.weight
        if point < 0:
            return b
    return choices[-1]
