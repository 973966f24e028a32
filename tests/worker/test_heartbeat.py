"""The heartbeat through a Redis outage (it keeps serving, backs off, and re-registers alone), and
under a Redis prefix (it writes, prunes and deregisters only its own deployment's names)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from contract.keyspace import Keyspace
from contract.registry import (
    WORKERS_KEY,
    WorkerState,
    model_workers_key,
    read_snapshot,
    worker_key,
)
from tests.processes import RedisServer
from worker.heartbeat import MAX_BACKOFF_S

from .conftest import MODEL, StartWorker

CHAT = "/v1/chat/completions"


async def test_reregisters_after_redis_comes_back_empty(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    server = RedisServer.create(tmp_path)
    server.start()
    redis: Redis[bytes] = Redis.from_url(server.url)
    try:
        client = await start_worker(redis_url=server.url, worker_id="w-out")
        assert "w-out" in (await read_snapshot(redis)).workers
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(3 * MAX_BACKOFF_S)  # long enough to reach the backoff cap
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post(CHAT, json=body)).status == 200  # serving throughout
        await asyncio.to_thread(server.start)  # empty: it saved nothing
        back = time.monotonic()
        while not await _registered(redis, "w-out"):
            assert time.monotonic() - back < MAX_BACKOFF_S + 1.0, "no re-registration"
            await asyncio.sleep(0.05)
        record = (await read_snapshot(redis)).workers["w-out"]
        assert record.state is WorkerState.READY
    finally:
        await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it
        server.stop()


async def _registered(redis: Redis[bytes], worker_id: str) -> bool:
    try:
        return worker_id in (await read_snapshot(redis)).workers
    except RedisConnectionError:  # our own pooled connection died with the old server
        return False


async def test_registers_under_its_prefix_prunes_expired_ids_and_deregisters(
    start_worker: StartWorker, redis_server: RedisServer, redis: Redis[bytes]
) -> None:
    blue = Keyspace("blue:")
    # Expired workers' ids: one of this deployment, one of the unprefixed one beside it.
    await redis.sadd(blue.key(WORKERS_KEY), "gone")
    await redis.sadd(model_workers_key(MODEL, blue), "gone")
    await redis.sadd(WORKERS_KEY, "gone")

    client = await start_worker(
        redis_url=redis_server.url, worker_id="w-blue", redis_prefix="blue:"
    )

    assert list((await read_snapshot(redis, keyspace=blue)).workers) == ["w-blue"]
    assert await redis.smembers(blue.key(WORKERS_KEY)) == {b"w-blue"}
    assert await redis.smembers(model_workers_key(MODEL, blue)) == {b"w-blue"}
    assert await redis.smembers(WORKERS_KEY) == {b"gone"}  # not this deployment's to prune
    assert not await redis.exists(worker_key("w-blue"))
    await client.close()
    assert not await redis.exists(worker_key("w-blue", blue))
    assert await redis.smembers(blue.key(WORKERS_KEY)) == set()
