"""SlotQueue: at most `slots` generations at once, then a bounded FIFO wait, then refusal.

A refused request gets 503 `service_unavailable` with `Retry-After: 1` (not 429): the worker is
saturated or draining, which says nothing about the caller's rate, and a router treats 503 from
one worker as "try another one".

`running` and `waiting` are exact at every moment: a slot freed while someone waits is handed
straight to the first waiter (running never dips), and every exit path (done, cancelled, client
gone while queued) gives back exactly what it took. Each change sets `load_changed`, which the
heartbeat waits on to publish the new load soon.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from contract.errors import ServiceUnavailable

RETRY_AFTER_S = 1.0


class SlotQueue:
    """The engine's generation slots and the line of requests waiting for one."""

    def __init__(self, slots: int, max_queue: int) -> None:
        if slots < 1 or max_queue < 0:
            raise ValueError("slots must be >= 1 and max_queue >= 0")
        self.slots = slots
        self.max_queue = max_queue
        self.load_changed = asyncio.Event()
        self._running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def draining(self) -> bool:
        return self._draining

    def start_draining(self) -> None:
        """Refuse new requests from now on; admitted and queued ones carry on."""
        self._draining = True
        self._changed()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing runs or waits; False if `timeout_s` passed first."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one generation slot for the body of the `async with`; raise 503 if refused."""
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        if self._draining:
            raise ServiceUnavailable(
                "This worker is shutting down; retry on another one.",
                retry_after_s=RETRY_AFTER_S,
            )
        if self._running < self.slots and not self._waiters:
            self._running += 1
            self._changed()
            return
        if len(self._waiters) >= self.max_queue:
            raise ServiceUnavailable(
                "This worker is at capacity; please retry shortly.",
                retry_after_s=RETRY_AFTER_S,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._changed()
        try:
            await waiter
        except BaseException:
            if not waiter.done() or waiter.cancelled():
                # Still queued (client left, or cancelled): leave the queue at once.
                self._remove_waiter(waiter)
            else:
                # A slot was handed over just as we were cancelled: pass it on.
                self._release()
            raise

    def _remove_waiter(self, waiter: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return
        self._changed()

    def _release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                # Hand the slot over; `running` stays the same.
                waiter.set_result(None)
                self._changed()
                return
        self._running = max(0, self._running - 1)
        self._changed()

    def _changed(self) -> None:
        if self._running == 0 and not self._waiters:
            self._idle.set()
        else:
            self._idle.clear()
        self.load_changed.set()
