"""The watcher: events, periodic full reads and ageing against a real Redis, and its backoff."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from contract.registry import (
    EVENTS_CHANNEL,
    MODELS_KEY,
    WORKERS_KEY,
    model_workers_key,
    publish_worker,
    remove_worker,
    worker_key,
)
from router.metrics import RouterMetrics
from router.view import RegistryView
from router.watcher import Backoff, RegistryWatcher
from tests.waits import eventually

from .fakes import MODEL, RedisServer, make_record

URL = "http://127.0.0.1:1"


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(first_s=0.1, cap_s=0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next() == 0.1


async def _watch(redis: Redis[bytes], view: RegistryView, refresh_s: float) -> RegistryWatcher:
    watcher = RegistryWatcher(redis, view, RouterMetrics(), refresh_s=refresh_s, read_timeout_s=1)
    await watcher.start()
    return watcher


async def _until_subscribed(redis: Redis[bytes]) -> None:
    for _ in range(300):
        [(_, subscribers)] = await redis.pubsub_numsub(EVENTS_CHANNEL)
        if subscribers:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the watcher never subscribed")


async def test_event_is_applied_without_a_full_read(redis: Redis[bytes]) -> None:
    view = RegistryView(stale_s=30)
    watcher = await _watch(redis, view, refresh_s=60)  # re-reads too rare to explain the result
    try:
        await _until_subscribed(redis)
        await publish_worker(redis, make_record("a", URL, running=3), ttl_ms=10_000)
        await eventually(lambda: len(view.candidates(MODEL)) == 1)
        assert view.candidates(MODEL)[0].load == 3
        await remove_worker(redis, "a", MODEL)
        await eventually(lambda: not view.upstreams)
    finally:
        await watcher.close()


async def test_periodic_full_read_finds_a_silent_write(redis: Redis[bytes]) -> None:
    view = RegistryView(stale_s=30)
    watcher = await _watch(redis, view, refresh_s=0.1)
    try:
        record = make_record("quiet", URL)
        # Written as publish_worker does, minus the event.
        pipe = redis.pipeline(transaction=False)
        pipe.hset(worker_key("quiet"), mapping=record.to_hash())  # type: ignore[arg-type]
        pipe.sadd(WORKERS_KEY, "quiet")
        pipe.sadd(model_workers_key(MODEL), "quiet")
        pipe.hset(MODELS_KEY, MODEL, "7")
        await pipe.execute()
        await eventually(lambda: "quiet" in view.upstreams, timeout_s=2)
        assert view.models[MODEL] == 7
    finally:
        await watcher.close()


async def test_a_silent_worker_ages_out_within_the_stale_time(redis: Redis[bytes]) -> None:
    view = RegistryView(stale_s=0.5)
    await publish_worker(redis, make_record("a", URL), ttl_ms=60_000)  # its key will linger
    watcher = await _watch(redis, view, refresh_s=0.1)
    try:
        assert "a" in view.upstreams
        await eventually(lambda: not view.upstreams, timeout_s=0.5 + 0.5)
        await asyncio.sleep(0.3)  # several full reads later, still gone
        assert not view.upstreams
    finally:
        await watcher.close()


async def test_redis_outage_keeps_the_last_view_and_recovers(
    redis: Redis[bytes], redis_server: RedisServer
) -> None:
    view = RegistryView(stale_s=0.5)
    await publish_worker(redis, make_record("a", URL), ttl_ms=60_000)
    watcher = await _watch(redis, view, refresh_s=0.1)
    try:
        redis_server.stop()
        await asyncio.sleep(1.0)  # twice the stale time without a heartbeat
        assert list(view.upstreams) == ["a"]
        age = view.registry_age_s()
        assert age is not None and age > 0.8

        redis_server.start()  # empty: it saved nothing
        await publish_worker(redis, make_record("b", URL), ttl_ms=60_000)
        await eventually(lambda: "b" in view.upstreams, timeout_s=8)
        await eventually(lambda: "a" not in view.upstreams, timeout_s=2)
        age = view.registry_age_s()
        assert age is not None and age < 1
    finally:
        await watcher.close()
