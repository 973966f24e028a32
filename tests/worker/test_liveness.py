"""A failed engine takes its worker down: /health 503 with the reason, the record gone, every
request refused, ENGINE_FAILED set (on which the CLI exits 3)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from contract.registry import EVENTS_CHANNEL, Event, EventType, read_snapshot
from contract.wire import Message, SamplingParams
from worker import appkeys
from worker.engine import EngineStopped, Failure, Finished
from worker.fake_engine import FakeEngine

from .conftest import MODEL, StartWorker

CHAT = "/v1/chat/completions"


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **fields}


async def drained(events: PubSub) -> list[bytes]:
    """Every message the subscription holds (the subscribe confirmation left out)."""
    found: list[bytes] = []
    for _ in range(20):
        message = await events.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if message is not None:
            found.append(message["data"])
    return found


async def test_a_failure_is_set_once_from_any_thread_and_awaited() -> None:
    failure = Failure()
    assert failure.reason is None
    waiter = asyncio.create_task(failure.wait())
    await asyncio.sleep(0)
    await asyncio.to_thread(failure.set, "the step loop died")
    failure.set("a later reason")  # the first one wins
    assert await asyncio.wait_for(waiter, 1) == "the step loop died"
    assert failure.reason == "the step loop died"
    cancelled = asyncio.create_task(failure.wait())
    await asyncio.sleep(0)
    cancelled.cancel()  # a waiter that leaves does not cancel the failure
    assert await failure.wait() == "the step loop died"


async def test_the_fake_engine_fails_for_good_after_its_token_count() -> None:
    engine = FakeEngine(ttft_ms=0, tokens_per_s=0, fail_after_tokens=3)
    texts: list[str] = []
    with pytest.raises(EngineStopped):
        async for item in engine.stream([Message("user", "hi")], SamplingParams(max_tokens=5)):
            assert not isinstance(item, Finished)
            texts.append(str(item))
    assert len(texts) == 3
    assert engine.failure.reason is not None
    with pytest.raises(EngineStopped):
        await anext(engine.stream([Message("user", "hi")], SamplingParams(max_tokens=1)))


async def test_a_worker_whose_engine_failed_leaves_and_refuses_everything(
    start_worker: StartWorker, redis_url: str
) -> None:
    engine = FakeEngine(ttft_ms=0, tokens_per_s=0, fail_after_tokens=4)
    client = await start_worker(engine, worker_id="w-dies")
    redis: Redis[bytes] = Redis.from_url(redis_url)
    try:
        assert "w-dies" in (await read_snapshot(redis)).workers
        assert (await client.post(CHAT, json=chat(max_tokens=2))).status == 200
        events = redis.pubsub()
        await events.subscribe(EVENTS_CHANNEL)
        # The stream in flight when the engine fails ends with an error event, then [DONE].
        streamed = await client.post(CHAT, json=chat(max_tokens=8, stream=True))
        body = await streamed.read()
        assert b'"error"' in body
        assert body.endswith(b"data: [DONE]\n\n")

        await asyncio.wait_for(client.app[appkeys.ENGINE_FAILED].wait(), 5)
        health = await client.get("/health")
        assert health.status == 503
        assert (await health.json())["state"] == "failed"
        assert "w-dies" not in (await read_snapshot(redis)).workers
        refused = await client.post(CHAT, json=chat(max_tokens=1))
        assert refused.status == 503
        # The heartbeat stays stopped: the record does not come back.
        await asyncio.sleep(0.3)
        assert "w-dies" not in (await read_snapshot(redis)).workers
        # Nor does the shutdown: it skips the drain, which would publish it as draining.
        await client.close()
        assert "w-dies" not in (await read_snapshot(redis)).workers
        published = [Event.decode(data).type for data in await drained(events)]
        assert EventType.LEAVE in published
        assert EventType.DRAIN not in published
        await events.aclose()  # type: ignore[attr-defined]  # types-redis predates it
    finally:
        await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it
