"""The watcher: events, periodic full reads and ageing against a real Redis, and its backoff."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from redis.asyncio import Redis

from contract.keyspace import Keyspace
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
from router.watcher import Backoff, LogOnce, RegistryWatcher
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


def _invalid(metrics: RouterMetrics, source: str) -> float:
    value = metrics.registry.get_sample_value(
        "router_registry_invalid_records_total", {"source": source}
    )
    assert value is not None
    return value


def test_log_once_per_key_per_period_and_bounded() -> None:
    now = [0.0]
    once = LogOnce(every_s=60, clock=lambda: now[0], max_keys=2)
    assert [once.due("a"), once.due("a"), once.due("b"), once.due("c")] == [
        True,
        False,
        True,
        False,
    ]
    now[0] = 61.0  # the period is over: a, b are forgotten, so c has room
    assert [once.due(k) for k in "caa"] == [True, True, False]


async def test_a_bad_record_is_skipped_counted_and_logged_once(
    redis: Redis[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    await publish_worker(redis, make_record("good", URL), ttl_ms=60_000)
    bad = make_record("bad", URL).to_hash() | {"url": "http://127.0.0.1:99999"}
    await redis.hset(worker_key("bad"), mapping=bad)  # type: ignore[arg-type]
    await redis.sadd(WORKERS_KEY, "bad")
    view, metrics = RegistryView(stale_s=30), RouterMetrics()
    watcher = RegistryWatcher(redis, view, metrics, refresh_s=0.05, read_timeout_s=1)
    with caplog.at_level(logging.WARNING, logger="router.watcher"):
        await watcher.start()  # the first read neither fails nor raises
        try:
            assert list(view.upstreams) == ["good"]
            await eventually(lambda: _invalid(metrics, "read") >= 5)  # refreshes go on
            assert list(view.upstreams) == ["good"]
            age = view.registry_age_s()
            assert age is not None and age < 1
        finally:
            await watcher.close()
    skipped = [r.getMessage() for r in caplog.records if "skipped an invalid" in r.getMessage()]
    assert skipped == [
        "registry: skipped an invalid record of worker 'bad': url: does not parse (a port "
        "outside 1..65535, or a broken [IPv6] host) (logged once per 60s)"
    ]


async def test_a_bad_event_is_skipped_and_the_events_that_follow_apply(
    redis: Redis[bytes],
) -> None:
    view, metrics = RegistryView(stale_s=30), RouterMetrics()
    watcher = RegistryWatcher(redis, view, metrics, refresh_s=60, read_timeout_s=1)
    await watcher.start()
    try:
        await _until_subscribed(redis)
        bad_record = make_record("bad", URL).to_dict() | {"url": "http://127.0.0.1:99999"}
        for data in (
            b"not json",
            b'{"type": "join", "worker_id": "bad", "worker": null}',
            orjson.dumps({"type": "join", "worker_id": "bad", "worker": bad_record}),
        ):
            await redis.publish(EVENTS_CHANNEL, data)
        await publish_worker(redis, make_record("good", URL), ttl_ms=60_000)
        await eventually(lambda: list(view.upstreams) == ["good"])
        assert _invalid(metrics, "events") == 3
        assert _invalid(metrics, "read") == 0
        errors = metrics.registry.get_sample_value("router_registry_errors_total", {"op": "events"})
        assert errors is None  # the subscription was never dropped
    finally:
        await watcher.close()


async def test_a_watcher_sees_only_its_own_prefix(redis: Redis[bytes]) -> None:
    staging = Keyspace("staging:")
    await publish_worker(redis, make_record("s-old", URL), ttl_ms=60_000, keyspace=staging)
    await publish_worker(redis, make_record("p-old", URL), ttl_ms=60_000)
    view = RegistryView(stale_s=30)
    watcher = RegistryWatcher(
        redis, view, RouterMetrics(), refresh_s=60, read_timeout_s=1, keyspace=staging
    )
    await watcher.start()
    try:
        assert list(view.upstreams) == ["s-old"]
        for _ in range(300):
            [(_, subscribers)] = await redis.pubsub_numsub("staging:registry:events")
            if subscribers:
                break
            await asyncio.sleep(0.01)
        await publish_worker(redis, make_record("p-new", URL), ttl_ms=60_000)
        await publish_worker(redis, make_record("s-new", URL), ttl_ms=60_000, keyspace=staging)
        await eventually(lambda: "s-new" in view.upstreams)
        await watcher.refresh()
        assert sorted(view.upstreams) == ["s-new", "s-old"]
    finally:
        await watcher.close()
