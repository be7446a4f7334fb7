"""The upstream side: one HTTP/1.1 client connection to an endpoint, parsed with httptools.

A connection serves one exchange at a time and reports to its *sink* (the client side of that
exchange). It never buffers a response: each callback goes straight to the sink, which writes to the
client and applies back-pressure by pausing this transport's reading.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from kubegate.planes.proxy.http import HOP_BY_HOP, connection_value_tokens

Address = tuple[str, int]

# trailer fields kept from one response; more are dropped (a bound on what an upstream can make us hold)
MAX_TRAILERS = 100


class ResponseHead:
    """A response head as read, classified once while it is parsed (one pass, no second loop over the
    headers): the end-to-end header lines ready to relay, and the facts the client side needs."""

    __slots__ = ("has_length", "headers", "hsts", "lines", "tokens", "transfer_encoding", "upgrade")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        # name, b": ", value, b"\r\n" per end-to-end header, in order (hop-by-hop ones left out)
        self.lines: list[bytes] = []
        self.has_length = False
        self.transfer_encoding = False
        self.hsts = False
        self.upgrade = b""
        # tokens of the Connection headers beyond keep-alive/close (they name headers to drop)
        self.tokens: set[bytes] | None = None

    def add(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"transfer-encoding":
                self.transfer_encoding = True
            elif lname == b"connection":
                tokens = connection_value_tokens(value)
                if tokens:
                    self.tokens = tokens if self.tokens is None else self.tokens | tokens
            elif lname == b"upgrade":
                self.upgrade = value
            return
        if lname == b"content-length":
            self.has_length = True
        elif lname == b"strict-transport-security":
            self.hsts = True
        self.lines += (name, b": ", value, b"\r\n")

    def without(self, names: set[bytes]) -> ResponseHead:
        """The same head without the named headers (those a Connection header lists)."""
        head = ResponseHead()
        for name, value in self.headers:
            if name.lower() not in names:
                head.add(name, value)
        return head


class ResponseSink(Protocol):
    def upstream_headers(self, status: int, head: ResponseHead, until_close: bool) -> None: ...
    def upstream_body(self, data: bytes) -> None: ...
    def upstream_complete(self, keep_alive: bool, trailers: list[tuple[bytes, bytes]] | None) -> None: ...
    def upstream_upgraded(self, rest: bytes) -> None: ...
    def upstream_tunnel_data(self, data: bytes) -> None: ...
    def upstream_failed(self, reason: str, timeout: bool) -> None: ...
    def upstream_writable(self, writable: bool) -> None: ...
    def upstream_flush(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_complete",
        "_expire",
        "_head",
        "_idle_deadline",
        "_idle_timer",
        "_last_activity",
        "_loop",
        "_parser",
        "_parser_reusable",
        "_read_timeout",
        "_read_timer",
        "_reading_paused",
        "_resp",
        "_skip_interim",
        "_status",
        "_trailers",
        "_tunnel",
        "_until_close",
        "address",
        "closed",
        "reused",
        "sink",
        "transport",
        "write_buffer_high",
    )

    def __init__(self, address: Address, write_buffer_high: int) -> None:
        self.address = address
        self.write_buffer_high = write_buffer_high
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.closed = False
        self.reused = False
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._parser_reusable = True
        self._resp = ResponseHead()
        # trailer fields of a chunked response, relayed after its last chunk
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._status = 0
        self._head = False
        self._complete = False
        self._skip_interim = False
        self._tunnel = False
        self._until_close = False
        self._read_timeout = 60.0
        self._read_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_deadline: float | None = None
        self._expire: tuple[Callable[[Address, UpstreamConnection], None], Address] | None = None
        self._last_activity = 0.0
        self._reading_paused = False

    # --- lifecycle --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=self.write_buffer_high)

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def begin(self, sink: ResponseSink, head_request: bool, read_timeout: float) -> None:
        """Attach to an exchange; call before writing its request."""
        if not self._parser_reusable:
            self._parser = httptools.HttpResponseParser(self)
        self._parser_reusable = False
        self.sink = sink
        if self._reading_paused:
            self.resume_reading()
        self._head = head_request
        self._complete = False
        self._resp = ResponseHead()
        self._trailers = None
        self._status = 0
        self._until_close = False
        self._read_timeout = read_timeout
        self._last_activity = self._loop.time()
        # the handle outlives exchanges (see _check_read_timeout): one per read_timeout, not per request
        if self._read_timer is None:
            self._read_timer = self._loop.call_at(
                self._last_activity + read_timeout, self._check_read_timeout
            )

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
            self._last_activity = self._loop.time()

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def detach(self) -> None:
        # the read timer is left to fire: it sees no sink and lapses
        self.sink = None

    def close(self) -> None:
        self.detach()
        self._cancel_read_timer()
        self.closed = True
        self.cancel_idle_timer()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.detach()
        self._cancel_read_timer()
        self.closed = True
        self.cancel_idle_timer()
        if self.transport is not None:
            self.transport.abort()

    # Lazy like the read timer: taking a connection from the pool clears the deadline instead of
    # cancelling the handle, so a busy connection does not create a timer handle per request.
    def start_idle_timer(
        self, timeout: float, expire: Callable[[Address, UpstreamConnection], None], address: Address
    ) -> None:
        self._idle_deadline = self._loop.time() + timeout
        self._expire = (expire, address)
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_at(self._idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        deadline = self._idle_deadline
        if deadline is None or self.closed:
            return
        if self._loop.time() < deadline:
            self._idle_timer = self._loop.call_at(deadline, self._idle_check)
            return
        if self._expire is not None:
            expire, address = self._expire
            expire(address, self)

    def idle_taken(self) -> None:
        self._idle_deadline = None

    def cancel_idle_timer(self) -> None:
        self._idle_deadline = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _cancel_read_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _check_read_timeout(self) -> None:
        self._read_timer = None
        if self.sink is None:
            return
        due = self._last_activity + self._read_timeout
        now = self._loop.time()
        if now < due:
            self._read_timer = self._loop.call_at(due, self._check_read_timeout)
            return
        sink = self.sink
        self.abort()
        sink.upstream_failed("upstream timed out", True)

    def touch(self) -> None:
        self._last_activity = self._loop.time()

    # --- transport callbacks ----------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        sink = self.sink
        if self._tunnel:
            if sink is not None:
                sink.upstream_tunnel_data(data)
            return
        if sink is None:
            # bytes on an idle connection: the upstream is confused; never reuse it
            self.close()
            return
        try:
            self._parser.feed_data(data)
            # whatever the sink held back to coalesce writes goes out at the end of each read
            sink.upstream_flush()
        except httptools.HttpParserUpgrade as upgrade:
            if self._status == 101 and self.sink is not None:
                self._tunnel = True
                self._cancel_read_timer()
                offset = upgrade.args[0] if upgrade.args else len(data)
                self.sink.upstream_upgraded(data[offset:])
        except httptools.HttpParserError as exc:
            if self.sink is not None:
                s = self.sink
                self.abort()
                s.upstream_failed(f"invalid response from upstream: {exc}", False)

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        self.cancel_idle_timer()
        self._cancel_read_timer()
        sink = self.sink
        if sink is None:
            return
        if self._tunnel:
            self.detach()
            sink.upstream_complete(False, None)
            return
        if self._until_close and self._status and not self._complete:
            self._complete = True
            self.detach()
            sink.upstream_complete(False, None)
            return
        if not self._complete and not was_closed:
            self.detach()
            sink.upstream_failed(
                "upstream closed the connection" if exc is None else f"upstream: {exc}", False
            )

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_writable(False)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.upstream_writable(True)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    # --- parser callbacks -------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self._status == 0:
            self._resp.add(name, value)
        elif self._trailers is None:
            self._trailers = [(name, value)]
        elif len(self._trailers) < MAX_TRAILERS:
            self._trailers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # interim responses (100 Continue answered by us, 103 hints) are not relayed
            self._skip_interim = True
            self._resp = ResponseHead()
            return
        self._status = status
        head = self._resp
        no_body = self._head or status in (204, 304)
        if not no_body and status != 101:
            self._until_close = not (head.has_length or head.transfer_encoding)
        if self.sink is not None:
            self.sink.upstream_headers(status, head, self._until_close)
        if self._head and self.sink is not None:
            # a HEAD response announces a length but has no body: the parser cannot know, so
            # finish here and start a fresh parser for the next exchange
            self._finish(self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self._complete:
            self.sink.upstream_body(body)

    def on_message_complete(self) -> None:
        if self._skip_interim:
            self._skip_interim = False
            return
        if self._complete or self._status == 101:
            return
        self._parser_reusable = True
        self._finish(self._parser.should_keep_alive())

    def _finish(self, keep_alive: bool) -> None:
        self._complete = True
        sink = self.sink
        self.detach()
        if sink is not None:
            sink.upstream_complete(keep_alive and not self._until_close, self._trailers)


async def connect(address: Address, timeout: float, write_buffer_high: int) -> UpstreamConnection:
    """Open a connection; raises OSError (refused, unreachable) or TimeoutError."""
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(
            lambda: UpstreamConnection(address, write_buffer_high), address[0], address[1]
        ),
        timeout,
    )
    return protocol
