"""Metering in the app, in-process: keyed requests are charged what was relayed however they end,
settled once (slot freed, tokens counted), and requests without a key are not metered at all.

Fake workers (tests/router/fakes.py) send neither the prompt-tokens header nor a usage trailer,
so a stream is metered from the body's estimate and the frames relayed; a plain answer from its
`usage`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from contract.sse import USAGE_TRAILER_HEADER
from router import tenant_admin
from router.appkeys import METRICS
from router.exchange import PROMPT_BYTES_PER_TOKEN
from router.tenants import NewKey
from tests.waits import eventually

from .fakes import MODEL, STREAM_FRAMES, RedisServer, RouterFactory, StartWorker

CHAT = "/v1/chat/completions"
Client = TestClient[web.Request, web.Application]


def body(stream: bool = True) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 50, "stream": stream})  # fmt: skip


ESTIMATE = len(body()) // PROMPT_BYTES_PER_TOKEN  # the prompt, without a worker's header


def headers(key: NewKey) -> dict[str, str]:
    return {"Content-Type": "application/json", "Authorization": f"Bearer {key.key}"}


async def new_key(redis: Redis[bytes], **limits: Any) -> NewKey:
    project = await tenant_admin.create_project(redis, "Acme")
    await tenant_admin.create_endpoint(redis, project.project_id, "chat", [MODEL])
    return await tenant_admin.create_key(redis, project.project_id, **limits)


async def usage(redis: Redis[bytes], key: NewKey) -> dict[str, int]:
    raw = await redis.hgetall(f"usage:key:{key.record.key_id}")
    return {k.decode(): int(v) for k, v in raw.items()}


async def charged(redis: Redis[bytes], key: NewKey, requests: int = 1) -> dict[str, int]:
    """The key's counters once `requests` requests have been settled."""

    async def settled() -> bool:
        return (await usage(redis, key)).get("requests", 0) >= requests

    for _ in range(200):
        if await settled():
            return await usage(redis, key)
        await asyncio.sleep(0.01)
    raise AssertionError(f"not settled: {await usage(redis, key)}")


async def test_a_stream_cut_by_its_worker_is_charged_what_was_relayed(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    worker = await start_worker("w1", mode="die")  # two frames, then the connection drops
    client = await start_router(auth=True)
    key = await new_key(redis)  # no limits: counted all the same
    resp = await client.post(CHAT, data=body(), headers=headers(key))
    assert (await resp.read()).startswith(STREAM_FRAMES[0] + STREAM_FRAMES[1])
    assert worker.headers[0][USAGE_TRAILER_HEADER] == "1"
    assert await charged(redis, key) == {
        "prompt_tokens": ESTIMATE,
        "completion_tokens": 2,
        "requests": 1,
    }


async def test_a_client_that_hangs_up_is_charged_what_it_was_sent(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    worker = await start_worker("w1", mode="hang")  # one frame, then nothing
    client = await start_router(auth=True)
    key = await new_key(redis, tpm=1000)
    resp = await client.post(CHAT, data=body(), headers=headers(key))
    assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 2) == STREAM_FRAMES[0]
    resp.close()
    await asyncio.wait_for(worker.cancelled.wait(), 2)
    assert await charged(redis, key) == {
        "prompt_tokens": ESTIMATE,
        "completion_tokens": 1,
        "requests": 1,
    }
    metrics = client.app[METRICS].registry if client.app else None
    assert metrics is not None
    pid, key_id = key.record.project_id, key.record.key_id
    assert metrics.get_sample_value(
        "router_tokens_total", {"project": pid, "kind": "prompt"}
    ) == float(ESTIMATE)
    completion = {"key_id": key_id, "kind": "completion"}
    assert metrics.get_sample_value("router_key_tokens_total", completion) == 1.0


async def test_a_plain_answer_is_charged_its_usage(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    await start_worker("w1")
    client = await start_router(auth=True)
    key = await new_key(redis, tpm=1000)
    resp = await client.post(CHAT, data=body(stream=False), headers=headers(key))
    assert resp.status == 200
    reserved = len(body(stream=False)) // PROMPT_BYTES_PER_TOKEN + 50  # prompt + max_tokens
    assert int(resp.headers["x-ratelimit-remaining-tokens"]) == 1000 - reserved
    assert await charged(redis, key) == {"prompt_tokens": 3, "completion_tokens": 1, "requests": 1}
    registry = client.app[METRICS].registry
    for kind, tokens in (("prompt", 3), ("completion", 1)):
        labels = {"model": MODEL, "kind": kind}
        assert registry.get_sample_value("router_model_tokens_total", labels) == tokens
    # Settled: the reservation went back, only the 4 tokens used stay charged (and the bucket
    # refills meanwhile, never past full).
    again = await client.post(CHAT, data=body(stream=False), headers=headers(key))
    left = int(again.headers["x-ratelimit-remaining-tokens"])
    assert 1000 - 4 - reserved <= left <= 1000 - reserved


async def test_requests_without_a_key_are_not_metered(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    worker = await start_worker("w1")
    client = await start_router(auth=False)
    resp = await client.post(CHAT, data=body(), headers={"Content-Type": "application/json"})
    assert resp.status == 200 and await resp.read()
    assert USAGE_TRAILER_HEADER not in worker.headers[0]
    assert await redis.keys("usage:*") == [] and await redis.keys("ratelimit:*") == []


async def test_a_key_at_its_concurrency_limit_gets_429_until_one_ends(
    start_worker: StartWorker, start_router: RouterFactory, redis: Redis[bytes]
) -> None:
    worker = await start_worker("w1", mode="hang")
    client = await start_router(auth=True)
    key = await new_key(redis, max_concurrent=1)
    same_id = {**headers(key), "X-Request-Id": "same"}  # the client's id is not the slot's
    first = await client.post(CHAT, data=body(), headers=same_id)
    await asyncio.wait_for(first.content.readuntil(b"\n\n"), 2)
    refused = await client.post(CHAT, data=body(), headers=same_id)
    assert refused.status == 429
    error = orjson.loads(await refused.read())["error"]
    assert error["code"] == "concurrency_limit_exceeded"
    assert "in flight: limit 1." in error["message"]
    assert refused.headers["Retry-After"] == "1"
    first.close()  # its slot is freed when it is settled
    worker.mode = "ok"
    await eventually(lambda: worker.cancelled.is_set())

    async def passes() -> bool:
        resp = await client.post(CHAT, data=body(stream=False), headers=headers(key))
        return resp.status == 200

    for _ in range(100):
        if await passes():
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the slot was never freed")
    assert await redis.zcard(f"concurrency:{key.record.key_id}") == 0


async def test_a_settle_redis_refuses_never_fails_the_answer(
    start_worker: StartWorker,
    start_router: RouterFactory,
    redis: Redis[bytes],
    redis_server: RedisServer,
) -> None:
    worker = await start_worker("w1")
    worker.gate = asyncio.Event()
    client = await start_router(auth=True)
    key = await new_key(redis, tpm=1000)
    pending = asyncio.ensure_future(client.post(CHAT, data=body(), headers=headers(key)))
    await asyncio.wait_for(worker.started.wait(), 2)
    redis_server.stop()  # admitted; Redis goes away before the request is settled
    worker.gate.set()
    resp = await pending
    assert resp.status == 200 and (await resp.read()).endswith(b"data: [DONE]\n\n")
    assert client.app is not None
    registry = client.app[METRICS].registry
    await eventually(lambda: registry.get_sample_value("router_settle_errors_total") == 1)
