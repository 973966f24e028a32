"""The Redis worker registry: key names, record encoding and the few operations on them.

Both sides use this module (the worker writes, the router reads), so the schema lives in one
place. Layout:

    workers                    set of worker ids (may hold ids whose record has expired)
    worker:{id}                hash, one WorkerRecord; expires unless the heartbeat refreshes it
    model:{model}:workers      set of worker ids serving that model
    models                     hash model id -> unix seconds it was first served (never shrinks,
                               so the router can tell "unknown model" from "no worker up")
    registry:events            pub/sub channel; each message is one JSON event (see Event)

A worker killed with -9 stops refreshing its hash, which expires after the TTL; readers prune
the dangling set members. Routers also age records out themselves from their own clock, so a
dead worker leaves every snapshot within one TTL even while Redis keys linger.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from redis.asyncio import Redis

WORKERS_KEY = "workers"
MODELS_KEY = "models"
EVENTS_CHANNEL = "registry:events"
SCHEMA_VERSION = 1


def worker_key(worker_id: str) -> str:
    return f"worker:{worker_id}"


def model_workers_key(model: str) -> str:
    return f"model:{model}:workers"


class WorkerState(enum.StrEnum):
    READY = "ready"
    DRAINING = "draining"


class EventType(enum.StrEnum):
    JOIN = "join"
    LOAD = "load"
    DRAIN = "drain"
    LEAVE = "leave"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    worker_id: str
    model: str
    url: str  # base URL, e.g. http://127.0.0.1:9001 (no trailing slash)
    state: WorkerState
    slots: int  # requests it runs at once
    running: int
    waiting: int
    max_queue: int  # waiting requests it accepts beyond its slots
    device: str  # "cpu" or "gpu"
    started_ms: int
    heartbeat_ms: int
    version: int = SCHEMA_VERSION

    @property
    def queue_depth(self) -> int:
        return self.running + self.waiting

    def with_load(self, running: int, waiting: int) -> WorkerRecord:
        return replace(self, running=running, waiting=waiting, heartbeat_ms=now_ms())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_hash(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_mapping(cls, raw: Mapping[Any, Any]) -> WorkerRecord:
        """Decode a Redis hash (bytes or str) or an event's JSON dict; raise ValueError if bad."""
        d = {_text(k): _text(v) for k, v in raw.items()}
        try:
            return cls(
                worker_id=d["worker_id"],
                model=d["model"],
                url=d["url"],
                state=WorkerState(d["state"]),
                slots=int(d["slots"]),
                running=int(d["running"]),
                waiting=int(d["waiting"]),
                max_queue=int(d["max_queue"]),
                device=d["device"],
                started_ms=int(d["started_ms"]),
                heartbeat_ms=int(d["heartbeat_ms"]),
                version=int(d.get("version", SCHEMA_VERSION)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad worker record: {exc!r}") from exc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    worker_id: str
    record: WorkerRecord | None  # None for LEAVE

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "type": self.type.value,
                "worker_id": self.worker_id,
                "worker": self.record.to_dict() if self.record else None,
            }
        )

    @classmethod
    def decode(cls, data: bytes | str) -> Event:
        """Decode one pub/sub message; ValueError, KeyError or TypeError if malformed."""
        raw = orjson.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("an event must be a JSON object")
        rec = raw.get("worker")
        if rec is not None and not isinstance(rec, dict):
            raise ValueError("an event's worker must be a JSON object")
        return cls(
            type=EventType(raw["type"]),
            worker_id=str(raw["worker_id"]),
            record=WorkerRecord.from_mapping(rec) if rec else None,
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a full read of the registry returns."""

    workers: dict[str, WorkerRecord]
    models: dict[str, int]  # model id -> created (unix s)


async def publish_worker(
    redis: Redis[Any], record: WorkerRecord, ttl_ms: int, event: EventType = EventType.LOAD
) -> None:
    """Write (or refresh) a worker's record, index it, and announce it, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    key = worker_key(record.worker_id)
    pipe.hset(key, mapping=record.to_hash())  # type: ignore[arg-type]
    pipe.pexpire(key, ttl_ms)
    pipe.sadd(WORKERS_KEY, record.worker_id)
    pipe.sadd(model_workers_key(record.model), record.worker_id)
    pipe.hsetnx(MODELS_KEY, record.model, str(record.started_ms // 1000))
    pipe.publish(EVENTS_CHANNEL, Event(event, record.worker_id, record).encode())
    await pipe.execute()


async def remove_worker(redis: Redis[Any], worker_id: str, model: str) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.delete(worker_key(worker_id))
    pipe.srem(WORKERS_KEY, worker_id)
    pipe.srem(model_workers_key(model), worker_id)
    pipe.publish(EVENTS_CHANNEL, Event(EventType.LEAVE, worker_id, None).encode())
    await pipe.execute()


async def read_snapshot(redis: Redis[Any]) -> Snapshot:
    """Read every live record; prune set members whose record has expired."""
    ids = sorted(_text(i) for i in await redis.smembers(WORKERS_KEY))
    pipe = redis.pipeline(transaction=False)
    for worker_id in ids:
        pipe.hgetall(worker_key(worker_id))
    pipe.hgetall(MODELS_KEY)
    *hashes, models_raw = await pipe.execute()
    workers: dict[str, WorkerRecord] = {}
    dead: list[str] = []
    for worker_id, raw in zip(ids, hashes, strict=True):
        if not raw:
            dead.append(worker_id)
            continue
        try:
            workers[worker_id] = WorkerRecord.from_mapping(raw)
        except ValueError:
            dead.append(worker_id)
    if dead:
        await _prune(redis, dead)
    models = {_text(k): int(_text(v)) for k, v in models_raw.items()}
    return Snapshot(workers=workers, models=models)


async def _prune(redis: Redis[Any], dead: list[str]) -> None:
    # Expired workers leave their ids in the index sets; the model set names are unknown once the
    # hash is gone, so sweep every model set (few keys, and only when something died).
    models = [_text(m) for m in await redis.hkeys(MODELS_KEY)]
    pipe = redis.pipeline(transaction=False)
    pipe.srem(WORKERS_KEY, *dead)
    for model in models:
        pipe.srem(model_workers_key(model), *dead)
    await pipe.execute()
