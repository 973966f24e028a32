"""A small bounded LRU cache whose entries expire, with one load per key at a time.

Pure asyncio (no redis, no aiohttp) and clock-injectable, so tests drive time by hand. Each
owner (one per app) builds its own: there is no module-level cache.
"""

from __future__ import annotations

import asyncio
import enum
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Final, Generic, Literal, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Miss(enum.Enum):
    MISS = enum.auto()


MISS: Final = _Miss.MISS  # what get() returns for "not cached": values themselves may be None


class TtlCache(Generic[K, V]):
    """At most `max_entries` values (least recently used evicted first), each dropped `ttl_s`
    after it was stored.

    get_or_load runs one load per key at a time (callers of a key being loaded wait for it), so
    a burst of requests on a cold key costs one round trip, not one per request.
    """

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float]) -> None:
        if not ttl_s >= 0:  # also rejects NaN
            raise ValueError(f"cache ttl_s must be >= 0, got {ttl_s}")
        if max_entries < 1:
            raise ValueError(f"cache max_entries must be >= 1, got {max_entries}")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._loading: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | Literal[_Miss.MISS]:
        entry = self._entries.get(key)
        if entry is None:
            return MISS
        if self._clock() >= entry[0]:
            del self._entries[key]
            return MISS
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V) -> None:
        if self.ttl_s <= 0:  # a zero TTL turns caching off
            return
        self._entries[key] = (self._clock() + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        value = self.get(key)
        if not isinstance(value, _Miss):
            return value
        future = self._loading.get(key)
        if future is None:
            future = asyncio.ensure_future(load())
            self._loading[key] = future
            future.add_done_callback(partial(self._loaded, key))
        # Shielded: one caller hanging up must not cancel the load the others wait for.
        return await asyncio.shield(future)

    def _loaded(self, key: K, future: asyncio.Future[V]) -> None:
        self._loading.pop(key, None)
        # Reading the exception also marks it retrieved when every waiter has gone.
        if not future.cancelled() and future.exception() is None:
            self.put(key, future.result())
