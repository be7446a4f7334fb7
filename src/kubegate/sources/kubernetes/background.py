"""Background work of the Kubernetes source: a mailbox that holds one item, and stopping tasks.

Status write-back and Event recording both use the mailbox: the reconciler submits after every
translation, the API is slow by comparison, and only the newest translation is worth writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("kubegate.kubernetes")

T = TypeVar("T")


class Latest(Generic[T]):
    def __init__(self) -> None:
        self._item: T | None = None
        self._wake = asyncio.Event()

    def put(self, item: T) -> None:
        """Hand over an item; one that was not taken yet is dropped for it."""
        self._item = item
        self._wake.set()

    async def serve(self, handle: Callable[[T], Awaitable[object]], what: str) -> None:
        """Handle each item, newest only, until cancelled. A failing handler is logged: a bug must not
        end the work for the life of the process."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            item, self._item = self._item, None
            if item is None:
                continue
            try:
                await handle(item)
            except Exception:
                log.exception("%s failed", what)


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks, wait until each has ended, and forget them."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    tasks.clear()
