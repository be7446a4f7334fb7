"""TCP relaying for the userspace L4 data plane: accept, connect upstream with retry, relay both ways.

Each accepted connection becomes a pair of asyncio Protocols that write what they read into each other:

- backpressure: when one side's write buffer passes the high-water mark, the other side stops reading until
  it drains below the low-water mark, so a fast sender never buffers more than ~high bytes in the proxy;
- half-close: EOF from one side becomes ``write_eof`` on the other; the pair closes once both directions
  have ended (or either side resets, which is propagated as a reset);
- idle timeout: a pair with no bytes moving either way for ``idle_timeout`` seconds is aborted;
- no endpoint reachable: the client connection is reset (SO_LINGER 0), as kube-proxy's REJECT would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

Address = tuple[str, int]
# (client ip, endpoints already tried) -> the endpoint to try next, or None when there is none
Chooser = Callable[[str, tuple[Address, ...]], Address | None]
# (endpoint, succeeded) -> None: passive health feedback
Reporter = Callable[[Address, bool], None]


@dataclass(frozen=True, slots=True)
class TcpOptions:
    connect_timeout: float
    connect_attempts: int
    idle_timeout: float
    write_buffer_high: int
    write_buffer_low: int


def reset(transport: asyncio.BaseTransport) -> None:
    """Close with RST rather than FIN, so the client sees 'connection refused/reset', not an empty reply."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


class _Side(asyncio.Protocol):
    """One socket of a relayed pair."""

    __slots__ = ("_pair", "eof", "eof_sent", "transport")

    def __init__(self, pair: _Pair) -> None:
        self._pair = pair
        self.transport: asyncio.Transport | None = None
        self.eof = False  # the peer socket sent FIN
        self.eof_sent = False  # we passed the other side's FIN on to it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)
        opts = self._pair.options
        self.transport.set_write_buffer_limits(high=opts.write_buffer_high, low=opts.write_buffer_low)

    def peer(self) -> _Side | None:
        pair = self._pair
        return pair.upstream if self is pair.client else pair.client

    def data_received(self, data: bytes) -> None:
        self._pair.active = True
        peer = self.peer()
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        self._pair.half_closed()
        return True  # keep our write direction open: the other side may still answer

    def pause_writing(self) -> None:
        # our buffer is full: stop the side that fills it
        peer = self.peer()
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer()
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._pair.lost(self, exc)


class _Pair:
    """A client connection and (once connected) its upstream connection."""

    __slots__ = ("_loop", "_timer", "active", "client", "closed", "options", "upstream")

    def __init__(self, loop: asyncio.AbstractEventLoop, options: TcpOptions) -> None:
        self._loop = loop
        self.options = options
        self.client = _Side(self)
        self.upstream: _Side | None = None
        self.closed = False
        # set by every read; the idle check clears it, so a timer tick costs nothing per byte
        self.active = True
        self._timer: asyncio.TimerHandle | None = None

    def start_idle_timer(self) -> None:
        self._timer = self._loop.call_later(self.options.idle_timeout, self._idle_check)

    def _idle_check(self) -> None:
        if self.closed:
            return
        if self.active:
            self.active = False
            self._timer = self._loop.call_later(self.options.idle_timeout, self._idle_check)
            return
        self.abort()

    def half_closed(self) -> None:
        client, upstream = self.client, self.upstream
        if upstream is None:
            return
        for src, dst in ((client, upstream), (upstream, client)):
            if src.eof and not dst.eof_sent and dst.transport is not None and not dst.transport.is_closing():
                dst.eof_sent = True
                if dst.transport.can_write_eof():
                    dst.transport.write_eof()
                else:
                    dst.transport.close()
        if client.eof and upstream.eof:
            self.close()

    def close(self) -> None:
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.close()  # flushes what is buffered first
        self._finish()

    def abort(self) -> None:
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.abort()
        self._finish()

    def _finish(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def lost(self, side: _Side, exc: Exception | None) -> None:
        other = side.peer()
        if other is not None and other.transport is not None and not other.transport.is_closing():
            if exc is not None:
                reset(other.transport)
            else:
                other.transport.close()
        self._finish()


def _factory(side: _Side) -> Callable[[], _Side]:
    return lambda: side


class _Accepted(_Side):
    """The client side: holds what it reads until an upstream is connected, then relays."""

    __slots__ = ("_choose", "_early", "_early_size", "_paused", "_report", "_tasks")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        options: TcpOptions,
        choose: Chooser,
        report: Reporter,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        pair = _Pair(loop, options)
        super().__init__(pair)
        pair.client = self
        self._choose = choose
        self._report = report
        self._tasks = tasks
        # bytes the client sent before the upstream connection was up; bounded by the high-water mark.
        # (Pausing in connection_made instead is not reliable: uvloop starts reading after it returns.)
        self._early: list[bytes] = []
        self._early_size = 0
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        client_ip = str(peer[0]) if peer else ""
        task = asyncio.get_running_loop().create_task(self._connect(client_ip))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def data_received(self, data: bytes) -> None:
        if self._pair.upstream is not None:
            super().data_received(data)
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size >= self._pair.options.write_buffer_high and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    async def _connect(self, client_ip: str) -> None:
        pair = self._pair
        opts = pair.options
        loop = asyncio.get_running_loop()
        tried: tuple[Address, ...] = ()
        for _ in range(max(1, opts.connect_attempts)):
            address = self._choose(client_ip, tried)
            if address is None:
                break
            tried += (address,)
            upstream = _Side(pair)
            try:
                await asyncio.wait_for(
                    loop.create_connection(_factory(upstream), address[0], address[1]),
                    opts.connect_timeout,
                )
            except (TimeoutError, OSError):
                self._report(address, False)
                continue
            self._report(address, True)
            if pair.closed:  # the client went away while we were connecting
                if upstream.transport is not None:
                    upstream.transport.close()
                return
            pair.upstream = upstream
            pair.start_idle_timer()
            assert upstream.transport is not None
            for data in self._early:
                upstream.transport.write(data)
            self._early = []
            if self.eof:
                pair.half_closed()
            if self._paused and self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
            return
        if self.transport is not None and not self.transport.is_closing():
            reset(self.transport)
        pair.closed = True


async def serve_tcp(
    host: str, port: int, options: TcpOptions, choose: Chooser, report: Reporter
) -> asyncio.Server:
    """Listen on host:port and relay every accepted connection to an endpoint ``choose`` names."""
    loop = asyncio.get_running_loop()
    # connect tasks are referenced here so they are not garbage collected mid-flight
    tasks: set[asyncio.Task[None]] = set()
    return await loop.create_server(
        lambda: _Accepted(loop, options, choose, report, tasks), host, port, reuse_address=True, backlog=1024
    )
