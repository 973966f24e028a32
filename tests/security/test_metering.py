"""Metering to the token, against real processes: redis-server, fake-engine workers (20 tokens
a second, so a stream lasts long enough to cut) and routers with auth on.

A key is charged its prompt and the tokens relayed however its stream ends (the client hangs up,
the worker is killed); admission reserves a request's worst case against the key's TPM, so a
burst cannot overrun it; a key's concurrency limit holds across routers and survives a router
killed mid-request only until the slot's lease ends; and the per-key and per-project counters,
in Redis and on /metrics, match the usage the client saw.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse, ClientSession, ClientTimeout
from redis.asyncio import Redis

from benchmarks.processes import router_sees
from router import tenant_admin
from router.exchange import PROMPT_BYTES_PER_TOKEN
from router.tenants import NewKey
from tests.processes import (
    MODEL_ID,
    HttpService,
    RedisServer,
    router_process,
    wait_until,
    worker_process,
)
from tests.security.services import CHAT, running, sample, scrape

VICTIM = "victim-model"  # served by a worker that one test kills
TOKENS_PER_S = "20"
PROMPT = "hello there"
PROMPT_TOKENS = 2 + 4  # the fake engine: words, plus 4 per message
# A router whose concurrency leases last 3 s: a slot it leaks is free again within seconds, while
# a live stream of it outlives many leases (it renews them).
SHORT_LEASE_S = 3.0
SHORT_ROUTER = ("--concurrency-lease-s", str(SHORT_LEASE_S))
_names = itertools.count()


def chat(max_tokens: int, *, stream: bool, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": stream,
        **extra,
    }


@dataclass
class Stack:
    tmp: Path
    redis: RedisServer
    router: HttpService

    async def new_key(self, **limits: Any) -> NewKey:
        """A key of a new project (so its project counters are its own) serving both models."""
        async with self.client() as r:
            project = await tenant_admin.create_project(r, f"p{next(_names)}")
            await tenant_admin.create_endpoint(r, project.project_id, "chat", [MODEL_ID, VICTIM])
            return await tenant_admin.create_key(r, project.project_id, **limits)

    def client(self) -> Redis[bytes]:
        return Redis.from_url(self.redis.url)

    async def usage(self, key: NewKey, *, requests: int = 1) -> dict[str, int]:
        """The key's Redis counters once `requests` requests have been settled (5 s at most)."""
        name = f"usage:key:{key.record.key_id}"
        async with self.client() as r:
            for _ in range(250):
                raw = {k.decode(): int(v) for k, v in (await r.hgetall(name)).items()}
                if raw.get("requests", 0) >= requests:
                    return raw
                await asyncio.sleep(0.02)
        raise AssertionError(f"{requests} request(s) of the key never settled: {raw}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("metering")
    server = RedisServer.create(tmp)
    server.start()
    fake = ("--fake-tokens-per-s", TOKENS_PER_S, "--slots", "8")
    worker = worker_process(tmp, server.url, "fw0", engine="fake", extra=fake)
    router = router_process(tmp, server.url, "ra", auth=True)
    try:
        with running(worker, router):
            wait_until(lambda: router_sees(router.url, 1), 10, "the router to see the worker")
            yield Stack(tmp, server, router)
    finally:
        server.stop()


@pytest.fixture
async def session() -> AsyncIterator[ClientSession]:
    async with ClientSession(timeout=ClientTimeout(total=30)) as s:
        yield s


def bearer(key: NewKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.key}"}


async def read_events(resp: ClientResponse, n: int) -> int:
    """Read until `n` SSE data events have arrived (or the stream ended); how many did."""
    seen = 0
    async for line in resp.content:
        if line.startswith(b"data: "):
            seen += 1
            if seen == n:
                break
    return seen


async def test_a_client_that_hangs_up_after_n_chunks_is_charged_for_them(
    stack: Stack, session: ClientSession
) -> None:
    key = await stack.new_key(tpm=1_000_000)
    n = 10
    resp = await session.post(
        stack.router.url + CHAT, json=chat(200, stream=True), headers=bearer(key)
    )
    assert resp.status == 200
    assert await read_events(resp, n) == n
    resp.close()  # hang up: ~10 s of the 200-token answer left
    used = await stack.usage(key)
    print(f"hung up after {n} chunks: charged {used}")
    charged = used["prompt_tokens"] + used["completion_tokens"]
    assert used["prompt_tokens"] >= PROMPT_TOKENS
    assert charged >= PROMPT_TOKENS + n - 1
    assert used["completion_tokens"] < 100  # what was relayed, not the whole max_tokens
    metrics = scrape(stack.router.url)
    for kind in ("prompt", "completion"):
        assert sample(
            metrics, "router_key_tokens_total", key_id=key.record.key_id, kind=kind
        ) == float(used[f"{kind}_tokens"])


async def test_a_stream_cut_by_a_killed_worker_is_charged_what_was_relayed(
    stack: Stack, session: ClientSession
) -> None:
    fake = ("--model-id", VICTIM, "--fake-tokens-per-s", TOKENS_PER_S)
    victim = worker_process(stack.tmp, stack.redis.url, "victim", engine="fake", extra=fake)
    key = await stack.new_key()  # no limits: metered all the same
    with running(victim):
        await asyncio.to_thread(wait_until, lambda: router_sees(stack.router.url, 2), 10, "it")
        body = {**chat(200, stream=True), "model": VICTIM}
        resp = await session.post(stack.router.url + CHAT, json=body, headers=bearer(key))
        n = 8
        assert await read_events(resp, n) == n
        victim.kill()  # SIGKILL: no trailer, no [DONE] from the worker
        rest = await resp.read()
    assert b'"code":"upstream_error"' in rest and rest.endswith(b"data: [DONE]\n\n")
    used = await stack.usage(key)
    print(f"worker killed after {n} chunks: charged {used}")
    assert used["prompt_tokens"] >= PROMPT_TOKENS
    assert used["prompt_tokens"] + used["completion_tokens"] >= PROMPT_TOKENS + n - 1
    assert used["completion_tokens"] < 100


async def test_fifty_concurrent_requests_get_only_what_the_budget_reserves(
    stack: Stack, session: ClientSession
) -> None:
    key = await stack.new_key(tpm=100)
    body = orjson.dumps(chat(20, stream=False))
    reservation = len(body) // PROMPT_BYTES_PER_TOKEN + 20  # the prompt's estimate + max_tokens
    expected = 100 // reservation
    assert expected >= 1

    async def post() -> tuple[int, dict[str, str], Any]:
        headers = {**bearer(key), "Content-Type": "application/json"}
        async with session.post(stack.router.url + CHAT, data=body, headers=headers) as resp:
            return resp.status, dict(resp.headers), orjson.loads(await resp.read())

    results = await asyncio.gather(*(post() for _ in range(50)))
    statuses = sorted(status for status, _, _ in results)
    passed = statuses.count(200)
    print(f"50 concurrent at --tpm 100, {reservation} reserved each: {passed} passed")
    assert passed == expected, statuses
    assert statuses.count(429) == 50 - expected
    for status, headers, payload in results:
        assert headers["x-ratelimit-limit-tokens"] == "100"
        if status == 429:
            assert payload["error"]["code"] == "rate_limit_exceeded"
            assert int(headers["x-ratelimit-remaining-tokens"]) < reservation
            assert headers["x-ratelimit-reset-tokens"] and int(headers["Retry-After"]) >= 1
    used = await stack.usage(key, requests=expected)
    served = [payload["usage"] for status, _, payload in results if status == 200]
    assert used["prompt_tokens"] == sum(u["prompt_tokens"] for u in served)
    assert used["completion_tokens"] == sum(u["completion_tokens"] for u in served)


async def open_stream(session: ClientSession, url: str, key: NewKey) -> ClientResponse:
    resp = await session.post(url + CHAT, json=chat(200, stream=True), headers=bearer(key))
    assert resp.status == 200
    assert await read_events(resp, 1) == 1
    return resp


async def post_status(session: ClientSession, url: str, key: NewKey) -> tuple[int, Any]:
    async with session.post(url + CHAT, json=chat(1, stream=False), headers=bearer(key)) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_a_key_past_its_concurrency_limit_gets_429_until_one_ends(
    stack: Stack, session: ClientSession
) -> None:
    key = await stack.new_key(max_concurrent=2)
    url = stack.router.url
    first, second = [await open_stream(session, url, key) for _ in range(2)]
    status, payload = await post_status(session, url, key)
    assert status == 429
    assert payload["error"]["code"] == "concurrency_limit_exceeded"
    assert "limit 2" in payload["error"]["message"]
    first.close()
    for _ in range(100):  # settled as soon as the router sees the hang-up
        status, _ = await post_status(session, url, key)
        if status == 200:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    second.close()


async def test_a_router_killed_mid_stream_frees_its_slot_when_the_lease_ends(
    stack: Stack, session: ClientSession
) -> None:
    key = await stack.new_key(max_concurrent=1)
    doomed = router_process(stack.tmp, stack.redis.url, "doomed", SHORT_ROUTER, auth=True)
    with running(doomed):
        await asyncio.to_thread(wait_until, lambda: router_sees(doomed.url, 1), 10, "worker")
        admitted_at = time.monotonic()
        stream = await open_stream(session, doomed.url, key)
        doomed.kill()  # SIGKILL mid-stream: it never settles
        stream.close()
    status, payload = await post_status(session, stack.router.url, key)
    assert status == 429, "the dead router's slot must still be held"
    assert payload["error"]["code"] == "concurrency_limit_exceeded"
    while time.monotonic() - admitted_at < SHORT_LEASE_S + 3:
        status, _ = await post_status(session, stack.router.url, key)
        if status == 200:
            break
        await asyncio.sleep(0.2)
    freed_after = time.monotonic() - admitted_at
    print(f"a killed router's slot came back after {freed_after:.1f} s (lease {SHORT_LEASE_S} s)")
    assert status == 200, "the slot leaked past its lease"
    assert freed_after >= SHORT_LEASE_S - 1.5  # held for its lease, not dropped early


async def test_a_live_stream_keeps_its_slot_past_many_leases(
    stack: Stack, session: ClientSession
) -> None:
    key = await stack.new_key(max_concurrent=1)
    short = router_process(stack.tmp, stack.redis.url, "renewing", SHORT_ROUTER, auth=True)
    with running(short):
        await asyncio.to_thread(wait_until, lambda: router_sees(short.url, 1), 10, "worker")
        stream = await open_stream(session, short.url, key)  # 200 tokens at 20/s: 10 s
        await asyncio.sleep(2.5 * SHORT_LEASE_S)
        status, payload = await post_status(session, stack.router.url, key)
        assert status == 429, "a renewed lease must still hold the live stream's slot"
        assert payload["error"]["code"] == "concurrency_limit_exceeded"
        stream.close()


async def test_counters_per_key_and_project_match_what_the_client_saw(
    stack: Stack, session: ClientSession
) -> None:
    key = await stack.new_key(rpm=100, tpm=100_000)
    seen = {"prompt_tokens": 0, "completion_tokens": 0}
    url, headers = stack.router.url + CHAT, bearer(key)
    for max_tokens in (3, 7):
        async with session.post(url, json=chat(max_tokens, stream=False), headers=headers) as r:
            usage = (await r.json())["usage"]
        streamed = chat(max_tokens, stream=True, stream_options={"include_usage": True})
        async with session.post(url, json=streamed, headers=headers) as r:
            frames = (await r.read()).split(b"\n\n")
        usage_chunk = orjson.loads(frames[-3].removeprefix(b"data: "))  # then [DONE], ""
        for one in (usage, usage_chunk["usage"]):
            for kind in seen:
                seen[kind] += one[kind]
    assert seen["completion_tokens"] == 2 * (3 + 7)
    used = await stack.usage(key, requests=4)
    assert used == {**seen, "requests": 4}
    async with stack.client() as r:
        project = await tenant_admin.usage(r, key.record.project_id)
    assert {k: project[k] for k in seen} == seen
    metrics = scrape(stack.router.url)
    for kind in ("prompt", "completion"):
        value = float(seen[f"{kind}_tokens"])
        pid, key_id = key.record.project_id, key.record.key_id
        assert sample(metrics, "router_tokens_total", project=pid, kind=kind) == value
        assert sample(metrics, "router_key_tokens_total", key_id=key_id, kind=kind) == value


async def test_a_burst_of_keyed_requests_never_runs_out_of_redis_connections(
    stack: Stack, session: ClientSession
) -> None:
    # 200 requests admitted at once: 200 admission scripts in flight together, then as many
    # settles. redis-py's default pool (100 connections, then MaxConnectionsError) answered
    # part of such a burst 503 "unable to check API keys".
    key = await stack.new_key(rpm=1_000_000, tpm=100_000_000)
    burst = 200  # within 8 slots + the queue's 256

    async def one() -> int:
        async with session.post(
            stack.router.url + CHAT, json=chat(1, stream=False), headers=bearer(key)
        ) as resp:
            await resp.read()
            return resp.status

    statuses = await asyncio.gather(*(one() for _ in range(burst)))
    assert statuses.count(200) == burst, sorted(set(statuses))
    assert (await stack.usage(key, requests=burst))["requests"] == burst
