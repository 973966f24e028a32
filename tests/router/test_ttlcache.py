"""The TTL cache alone, on a hand-driven clock: LRU bound, expiry, one load per key."""

from __future__ import annotations

import asyncio

import pytest

from router.ttlcache import MISS, TtlCache

from .conftest import FakeClock


async def test_ttl_cache_lru_ttl_and_failed_loads(clock: FakeClock) -> None:
    cache: TtlCache[str, int | None] = TtlCache(1.0, 2, clock.monotonic)
    cache.put("a", 1)
    cache.put("b", None)  # a cached negative is a hit, not a miss
    assert cache.get("b") is None and cache.get("a") == 1
    cache.put("c", 3)  # evicts b, the least recently used
    assert cache.get("b") is MISS and cache.get("a") == 1
    clock.advance(1.0)
    assert cache.get("a") is MISS and len(cache) == 1

    async def fail() -> int | None:
        raise ConnectionError("redis down")

    with pytest.raises(ConnectionError):
        await cache.get_or_load("d", fail)
    assert cache.get("d") is MISS  # errors are never cached

    async def seven() -> int | None:
        return 7

    assert await cache.get_or_load("d", seven) == 7 and cache.get("d") == 7
    off: TtlCache[str, int] = TtlCache(0.0, 2, clock.monotonic)
    off.put("a", 1)
    assert off.get("a") is MISS


async def test_one_load_per_key_at_a_time_and_a_cancelled_caller_does_not_cancel_it(
    clock: FakeClock,
) -> None:
    cache: TtlCache[str, int] = TtlCache(1.0, 10, clock.monotonic)
    release = asyncio.Event()
    loads = 0

    async def load() -> int:
        nonlocal loads
        loads += 1
        await release.wait()
        return loads

    first = asyncio.create_task(cache.get_or_load("k", load))
    others = [asyncio.create_task(cache.get_or_load("k", load)) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await asyncio.gather(*others) == [1, 1, 1]
    with pytest.raises(asyncio.CancelledError):
        await first
    assert loads == 1 and cache.get("k") == 1


def test_rejects_bad_bounds(clock: FakeClock) -> None:
    for ttl_s, entries in ((-1.0, 1), (float("nan"), 1), (1.0, 0)):
        with pytest.raises(ValueError):
            TtlCache(ttl_s, entries, clock.monotonic)
