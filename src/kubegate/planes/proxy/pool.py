"""Idle upstream connections per endpoint, reused LIFO (the warmest first) with a cap and a timeout."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubegate.planes.proxy.forward import UpstreamConnection

Address = tuple[str, int]


class UpstreamPool:
    __slots__ = ("_idle", "_idle_timeout", "_loop", "_max_idle", "opened")

    def __init__(self, max_idle: int, idle_timeout: float) -> None:
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._idle: dict[Address, list[UpstreamConnection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # connections ever opened, per endpoint (keep-alive reuse is visible in this)
        self.opened: dict[Address, int] = {}

    def take(self, address: Address) -> UpstreamConnection | None:
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            conn.idle_taken()
            if conn.usable():
                return conn
        return None

    def put(self, address: Address, conn: UpstreamConnection) -> None:
        idle = self._idle.get(address)
        if idle is None:
            idle = self._idle[address] = []
        if len(idle) >= self._max_idle or not conn.usable():
            conn.close()
            return
        idle.append(conn)
        conn.start_idle_timer(self._idle_timeout, self._expire, address)

    def _expire(self, address: Address, conn: UpstreamConnection) -> None:
        self.discard(address, conn)
        conn.close()

    def discard(self, address: Address, conn: UpstreamConnection) -> None:
        idle = self._idle.get(address)
        if idle and conn in idle:
            idle.remove(conn)

    def count_open(self, address: Address) -> None:
        self.opened[address] = self.opened.get(address, 0) + 1

    def idle_count(self, address: Address) -> int:
        return len(self._idle.get(address, ()))

    def close_all(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
