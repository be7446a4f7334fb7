"""UDP relaying for the userspace L4 data plane.

UDP has no connections, so the proxy makes sessions: the first datagram from a client address picks an
endpoint and opens a connected upstream socket of its own; replies arriving on that socket go back to that
client from the listener's address. A session with no datagrams either way for ``idle_timeout`` seconds is
closed, and the client's next datagram starts a new one (possibly to another endpoint).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

Address = tuple[str, int]
Chooser = Callable[[str, tuple[Address, ...]], Address | None]

# datagrams held per session while its upstream socket is being opened; more are dropped, as a full
# socket buffer would
_PENDING_LIMIT = 64


class _Upstream(asyncio.DatagramProtocol):
    __slots__ = ("_session",)

    def __init__(self, session: _Session) -> None:
        self._session = session

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._session.reply(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from the endpoint: nothing to tell the client in UDP; the session idles out
        pass


class _Session:
    __slots__ = ("_listener", "client", "endpoint", "last", "pending", "transport")

    def __init__(self, listener: UdpListener, client: Address, endpoint: Address, now: float) -> None:
        self._listener = listener
        self.client = client
        self.endpoint = endpoint
        self.last = now
        self.pending: list[bytes] | None = []
        self.transport: asyncio.DatagramTransport | None = None

    def send(self, data: bytes, now: float) -> None:
        self.last = now
        if self.transport is not None:
            self.transport.sendto(data)
        elif self.pending is not None and len(self.pending) < _PENDING_LIMIT:
            self.pending.append(data)

    def reply(self, data: bytes) -> None:
        self.last = self._listener.now()
        self._listener.send_to_client(data, self.client)

    def close(self) -> None:
        self.pending = None
        if self.transport is not None:
            self.transport.close()


class UdpListener(asyncio.DatagramProtocol):
    """One listening UDP socket and the sessions of the clients that sent to it."""

    def __init__(self, choose: Chooser, idle_timeout: float) -> None:
        self._choose = choose
        self._idle = idle_timeout
        self._transport: asyncio.DatagramTransport | None = None
        self.sessions: dict[Address, _Session] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio's
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._schedule_sweep()

    def _schedule_sweep(self) -> None:
        # a few sweeps per timeout bounds how late a session expires without a timer per session
        self._sweeper = self._loop.call_later(max(self._idle / 4, 0.01), self._sweep)

    def _sweep(self) -> None:
        deadline = self.now() - self._idle
        for client in [c for c, s in self.sessions.items() if s.last <= deadline]:
            self.sessions.pop(client).close()
        self._schedule_sweep()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        client = (addr[0], addr[1])
        session = self.sessions.get(client)
        now = self.now()
        if session is None:
            endpoint = self._choose(client[0], ())
            if endpoint is None:
                return  # no endpoint: drop, as a REJECT rule would (minus the ICMP)
            session = _Session(self, client, endpoint, now)
            self.sessions[client] = session
            task = self._loop.create_task(self._open(session, endpoint))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        session.send(data, now)

    async def _open(self, session: _Session, endpoint: Address) -> None:
        try:
            transport, _ = await self._loop.create_datagram_endpoint(
                lambda: _Upstream(session), remote_addr=endpoint
            )
        except OSError:
            if self.sessions.get(session.client) is session:
                del self.sessions[session.client]
            return
        if session.pending is None:  # expired or closed meanwhile
            transport.close()
            return
        session.transport = transport
        for data in session.pending:
            transport.sendto(data)
        session.pending = []

    def drop_sessions_not_to(self, endpoints: set[Address]) -> None:
        """End sessions whose endpoint is gone, so their clients' next datagrams pick a live one
        (what flushing conntrack entries does in kernel mode)."""
        for client in [c for c, s in self.sessions.items() if s.endpoint not in endpoints]:
            self.sessions.pop(client).close()

    def send_to_client(self, data: bytes, client: Address) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, client)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()


async def serve_udp(host: str, port: int, choose: Chooser, idle_timeout: float) -> UdpListener:
    loop = asyncio.get_running_loop()
    _, listener = await loop.create_datagram_endpoint(
        lambda: UdpListener(choose, idle_timeout), local_addr=(host, port)
    )
    return listener
