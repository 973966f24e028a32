"""Concurrency leases: a router renews the slots it holds, and only those."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from contract.keyspace import Keyspace
from router.leases import LeaseKeeper
from router.tenants import concurrency_key

KEYSPACE = Keyspace("t:")


async def deadline(redis: Redis[bytes], key_id: str, slot: str) -> float | None:
    return await redis.zscore(concurrency_key(KEYSPACE, key_id), slot)


async def test_renew_pushes_held_slots_a_lease_ahead_and_leaves_the_rest(
    redis: Redis[bytes],
) -> None:
    keeper = LeaseKeeper(redis, KEYSPACE, lease_s=60)
    key = concurrency_key(KEYSPACE, "k1")
    await redis.zadd(key, {"mine": 1, "dropped": 1, "other-router": 1})
    await redis.pexpire(key, 1000)  # as admission leaves it
    keeper.hold("k1", "mine")
    keeper.hold("k1", "dropped")
    keeper.drop("dropped")
    keeper.hold("k2", "expired")  # its lease ran out meanwhile: not in Redis any more

    assert await keeper.renew() == 2
    now_ms = (await redis.time())[0] * 1000
    mine = await deadline(redis, "k1", "mine")
    assert mine is not None and now_ms + 59_000 <= mine <= now_ms + 61_000
    assert await deadline(redis, "k1", "dropped") == 1
    assert await deadline(redis, "k1", "other-router") == 1
    assert await deadline(redis, "k2", "expired") is None  # renewing never brings one back
    assert 59_000 <= await redis.pttl(key) <= 60_000


async def test_nothing_held_costs_no_round_trip(redis: Redis[bytes]) -> None:
    keeper = LeaseKeeper(redis, KEYSPACE, lease_s=60)
    assert await keeper.renew() == 0
    assert len(keeper) == 0


async def test_the_background_loop_keeps_a_slot_alive_past_its_lease(redis: Redis[bytes]) -> None:
    keeper = LeaseKeeper(redis, KEYSPACE, lease_s=0.3)
    key = concurrency_key(KEYSPACE, "k1")
    now_ms = (await redis.time())[0] * 1000
    await redis.zadd(key, {"mine": now_ms + 300})
    await redis.pexpire(key, 300)
    keeper.hold("k1", "mine")
    keeper.start()
    try:
        await asyncio.sleep(1.0)  # three leases
        assert await redis.exists(key) == 1
        first = await deadline(redis, "k1", "mine")
        assert first is not None and first > now_ms + 600
    finally:
        await keeper.close()
    await asyncio.sleep(0.5)  # stopped: the lease runs out
    assert await redis.exists(key) == 0
