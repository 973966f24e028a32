"""contract.registry: record and event encoding, and the operations against a real redis-server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from contract.keyspace import Keyspace
from contract.registry import (
    EVENTS_CHANNEL,
    MODELS_KEY,
    SCHEMA_VERSION,
    WORKERS_KEY,
    Event,
    EventType,
    InvalidRecord,
    Snapshot,
    WorkerRecord,
    WorkerState,
    model_workers_key,
    prune_workers,
    publish_worker,
    read_snapshot,
    remove_worker,
    worker_key,
)
from tests.waits import eventually

TTL_MS = 60_000


def record(worker_id: str = "w1", model: str = "smollm2", **fields: Any) -> WorkerRecord:
    base = WorkerRecord(
        worker_id=worker_id,
        model=model,
        url="http://127.0.0.1:9001",
        state=WorkerState.READY,
        slots=4,
        running=2,
        waiting=3,
        max_queue=16,
        device="cpu",
        started_ms=1_700_000_123_456,
        heartbeat_ms=1_700_000_124_000,
    )
    return replace(base, **fields)


def test_key_names() -> None:
    assert (WORKERS_KEY, MODELS_KEY, EVENTS_CHANNEL) == ("workers", "models", "registry:events")
    assert worker_key("w1") == "worker:w1"
    assert model_workers_key("smollm2") == "model:smollm2:workers"


def test_key_names_under_a_prefix_and_unchanged_without_one() -> None:
    staging = Keyspace("staging:")
    assert worker_key("w1", staging) == "staging:worker:w1"
    assert model_workers_key("m", staging) == "staging:model:m:workers"
    assert worker_key("w1", Keyspace()) == worker_key("w1") == "worker:w1"


def test_to_hash_is_all_strings() -> None:
    hashed = record().to_hash()
    assert all(isinstance(v, str) for v in hashed.values())
    assert hashed["state"] == "ready" and hashed["slots"] == "4"
    assert hashed["version"] == str(SCHEMA_VERSION)


def test_from_mapping_round_trips_str_bytes_and_json_dicts() -> None:
    rec = record(state=WorkerState.DRAINING, device="gpu")
    as_bytes = {k.encode(): v.encode() for k, v in rec.to_hash().items()}
    assert WorkerRecord.from_mapping(rec.to_hash()) == rec
    assert WorkerRecord.from_mapping(as_bytes) == rec
    assert WorkerRecord.from_mapping(rec.to_dict()) == rec
    assert WorkerRecord.from_mapping(rec.to_hash()).state is WorkerState.DRAINING


def test_a_record_without_version_is_the_current_schema() -> None:
    hashed = record().to_hash()
    del hashed["version"]
    assert WorkerRecord.from_mapping(hashed).version == SCHEMA_VERSION


def test_queue_depth_and_with_load() -> None:
    rec = record()
    assert rec.queue_depth == 5
    before_ms = time.time_ns() // 1_000_000
    loaded = rec.with_load(running=4, waiting=0)
    assert (loaded.running, loaded.waiting, loaded.queue_depth) == (4, 0, 4)
    assert loaded.heartbeat_ms >= before_ms
    assert replace(loaded, running=2, waiting=3, heartbeat_ms=rec.heartbeat_ms) == rec


def _without(key: str) -> dict[str, str]:
    hashed = record().to_hash()
    del hashed[key]
    return hashed


@pytest.mark.parametrize(
    "raw",
    [
        {},
        _without("worker_id"),
        _without("url"),
        _without("heartbeat_ms"),
        record().to_hash() | {"state": "sleeping"},
        record().to_hash() | {"slots": "four"},
        record().to_hash() | {"started_ms": ""},
        record().to_hash() | {"version": "v1"},
        {b"worker_id": b"w1", b"model": b"m"},
    ],
)
def test_a_bad_record_is_a_value_error(raw: dict[Any, Any]) -> None:
    with pytest.raises(ValueError):
        WorkerRecord.from_mapping(raw)
    with pytest.raises(InvalidRecord):
        WorkerRecord.from_mapping(raw)


@pytest.mark.parametrize("event_type", list(EventType))
def test_event_round_trips(event_type: EventType) -> None:
    rec = None if event_type is EventType.LEAVE else record()
    event = Event(event_type, "w1", rec)
    encoded = event.encode()
    assert Event.decode(encoded) == event
    assert Event.decode(encoded.decode()) == event
    assert orjson.loads(encoded) == {
        "type": event_type.value,
        "worker_id": "w1",
        "worker": rec.to_dict() if rec else None,
    }


# What the router's event watcher catches when it drops one malformed event.
WATCHER_CATCHES = InvalidRecord


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"type": "explode", "worker_id": "w1", "worker": null}',
        b'{"worker_id": "w1", "worker": null}',
        b'{"type": "leave", "worker": null}',
        b'{"type": "load", "worker_id": "w1", "worker": {"worker_id": "w1"}}',
    ],
)
def test_a_malformed_event_raises_what_the_watcher_catches(data: bytes) -> None:
    with pytest.raises(WATCHER_CATCHES):
        Event.decode(data)


@pytest.mark.parametrize(
    "data",
    [b"[1]", b"42", b'"leave"', b'{"type": "load", "worker_id": "w1", "worker": [1]}'],
)
def test_a_non_object_event_raises_what_the_watcher_catches(data: bytes) -> None:
    with pytest.raises(WATCHER_CATCHES):
        Event.decode(data)


@pytest.fixture
async def events(redis: Redis[bytes]) -> AsyncIterator[PubSub]:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(EVENTS_CHANNEL)

    async def subscribed() -> bool:  # SUBSCRIBE is not confirmed before it returns
        [(_, subscribers)] = await redis.pubsub_numsub(EVENTS_CHANNEL)
        return bool(subscribers)

    await eventually(subscribed)
    yield pubsub
    await pubsub.aclose()  # type: ignore[attr-defined]  # types-redis predates it


async def published(pubsub: PubSub, wait_s: float = 2.0) -> list[Event]:
    """Every event that arrives until none has for a short while."""
    out: list[Event] = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is None:
            if out:
                break
            continue
        out.append(Event.decode(message["data"]))
    return out


async def test_publish_worker_writes_hash_ttl_indexes_models_and_one_event(
    redis: Redis[bytes], events: PubSub
) -> None:
    rec = record()
    await publish_worker(redis, rec, TTL_MS, EventType.JOIN)

    stored = await redis.hgetall(worker_key("w1"))
    assert WorkerRecord.from_mapping(stored) == rec
    assert 0 < await redis.pttl(worker_key("w1")) <= TTL_MS
    assert await redis.smembers(WORKERS_KEY) == {b"w1"}
    assert await redis.smembers(model_workers_key("smollm2")) == {b"w1"}
    assert await redis.hgetall(MODELS_KEY) == {b"smollm2": b"1700000123"}
    assert await published(events) == [Event(EventType.JOIN, "w1", rec)]


async def test_a_refresh_renews_the_ttl_but_keeps_when_the_model_was_first_served(
    redis: Redis[bytes], events: PubSub
) -> None:
    await publish_worker(redis, record(), 500)
    later = record(started_ms=1_800_000_000_000, running=0, waiting=0)
    await publish_worker(redis, later, TTL_MS)

    assert WorkerRecord.from_mapping(await redis.hgetall(worker_key("w1"))) == later
    assert await redis.pttl(worker_key("w1")) > 500
    assert await redis.hget(MODELS_KEY, "smollm2") == b"1700000123"
    assert [e.type for e in await published(events)] == [EventType.LOAD, EventType.LOAD]


async def test_remove_worker_deletes_unindexes_and_announces_leave(
    redis: Redis[bytes], events: PubSub
) -> None:
    await publish_worker(redis, record("w1"), TTL_MS)
    await publish_worker(redis, record("w2"), TTL_MS)
    assert len(await published(events)) == 2

    await remove_worker(redis, "w1", "smollm2")

    assert not await redis.exists(worker_key("w1"))
    assert await redis.smembers(WORKERS_KEY) == {b"w2"}
    assert await redis.smembers(model_workers_key("smollm2")) == {b"w2"}
    assert await redis.hkeys(MODELS_KEY) == [b"smollm2"]  # models never shrink
    assert await published(events) == [Event(EventType.LEAVE, "w1", None)]


async def test_read_snapshot_of_an_empty_registry(redis: Redis[bytes]) -> None:
    assert await read_snapshot(redis) == Snapshot(workers={}, models={})


async def test_read_snapshot_returns_live_valid_records_and_writes_nothing(
    redis: Redis[bytes],
) -> None:
    alive = record("alive")
    other = record("other", model="qwen", started_ms=1_600_000_000_000)
    for rec in (alive, other, record("expired"), record("malformed", model="qwen")):
        await publish_worker(redis, rec, TTL_MS)
    await redis.delete(worker_key("expired"))  # as if its TTL had run out
    await redis.hdel(worker_key("malformed"), "slots")

    snapshot = await read_snapshot(redis)

    assert snapshot.workers == {"alive": alive, "other": other}
    assert snapshot.models == {"smollm2": 1_700_000_123, "qwen": 1_600_000_000}
    assert [(i.worker_id, i.reason) for i in snapshot.invalid] == [("malformed", "slots: missing")]
    # Routers only read: the index is left for a registering worker to prune.
    assert len(await redis.smembers(WORKERS_KEY)) == 4


async def test_prune_workers_drops_only_expired_ids_from_every_index(redis: Redis[bytes]) -> None:
    alive = record("alive")
    other = record("other", model="qwen")
    for rec in (alive, other, record("expired", model="qwen"), record("malformed")):
        await publish_worker(redis, rec, TTL_MS)
    await redis.delete(worker_key("expired"))
    await redis.hdel(worker_key("malformed"), "slots")

    assert await prune_workers(redis) == ["expired"]

    assert await redis.smembers(WORKERS_KEY) == {b"alive", b"other", b"malformed"}
    # The dead ids leave every model's set, whichever model they served.
    assert await redis.smembers(model_workers_key("smollm2")) == {b"alive", b"malformed"}
    assert await redis.smembers(model_workers_key("qwen")) == {b"other"}
    assert await prune_workers(redis) == []


async def test_a_record_leaves_the_snapshot_once_its_ttl_runs_out(redis: Redis[bytes]) -> None:
    await publish_worker(redis, record("brief"), 100)
    await publish_worker(redis, record("steady"), TTL_MS)
    assert set((await read_snapshot(redis)).workers) == {"brief", "steady"}

    async def expired() -> bool:
        return not await redis.exists(worker_key("brief"))

    await eventually(expired)
    assert set((await read_snapshot(redis)).workers) == {"steady"}
    await prune_workers(redis)
    assert await redis.smembers(WORKERS_KEY) == {b"steady"}
