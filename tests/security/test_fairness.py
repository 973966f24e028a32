"""Fair queueing, against real processes: one tenant's flood delays only that tenant.

redis-server, two fake workers (SLOTS slots each) and a router with auth on; projects A and B,
each with a key. Tenant A floods FLOOD short streams at once, which fills every slot and the
router's queue (QUEUE_MAX) and gets some 503s of its own; the moment it does, tenant B sends
B_REQUESTS longer plain answers at once. B must get no 503, and its p99 time to first byte (a
plain answer's first byte comes with the whole answer) must stay under twice what the same
B_REQUESTS get on the idle stack.

Why these shapes: while A waits too, fair queueing owes B half the slots, so B's burst is kept
within that half (B_REQUESTS <= 2 * SLOTS / 2): a burst that queued even alone would take twice
as long under any fair share, which is the share working, not a flood hurting B. What the flood
may still cost B is waiting for places to free: at most one of A's short streams (A_MS), against
B's own answer (B_MS, about 3 A_MS) that the unloaded figure already holds. Under plain FIFO,
B waits behind A's whole queue or is refused with `queue_full`. The queue is kept small (the flood
is nearly 3 times slots + queue) so that the flood fills it even on a busy machine, where its
requests arrive slower than the first ones finish.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientSession, ClientTimeout, TCPConnector
from redis.asyncio import Redis

from benchmarks.processes import router_sees, wait_until
from router import tenant_admin
from tests.processes import MODEL_ID, HttpService, RedisServer, router_process, worker_process

SLOTS = 20  # per worker; two workers
TTFT_MS = 100
TOKENS_PER_S = 10  # slow enough that the flood outruns the slots even on a busy machine
A_TOKENS = 3  # A's streams: about TTFT + 2 tokens = 300 ms (A_MS)
B_TOKENS = 9  # B's answers: about TTFT + 8 tokens = 900 ms (B_MS)
FLOOD = 300
QUEUE_MAX = 64  # B's fair share of it (32) holds all of B's burst
B_REQUESTS = 20


@dataclass(frozen=True)
class Tenant:
    url: str  # the path-based chat completions URL of the tenant's endpoint
    headers: dict[str, str]


@dataclass(frozen=True)
class Stack:
    router: HttpService
    a: Tenant
    b: Tenant


async def _tenant(redis: Redis[bytes], router_url: str, name: str) -> Tenant:
    project = await tenant_admin.create_project(redis, name)
    await tenant_admin.create_endpoint(redis, project.project_id, "gen", [MODEL_ID])
    key = await tenant_admin.create_key(redis, project.project_id, name=name)
    return Tenant(
        f"{router_url}/{project.project_id}/gen/v1/chat/completions",
        {"Authorization": f"Bearer {key.key}"},
    )


@pytest.fixture
async def stack(
    tmp_path: Path, redis_server: RedisServer, redis: Redis[bytes]
) -> AsyncIterator[Stack]:
    options = (
        *("--slots", str(SLOTS)),
        *("--fake-ttft-ms", str(TTFT_MS)),
        *("--fake-tokens-per-s", str(TOKENS_PER_S)),
    )
    workers = [
        worker_process(tmp_path, redis_server.url, f"w{i}", engine="fake", extra=options)
        for i in range(2)
    ]
    router = router_process(
        tmp_path, redis_server.url, extra=("--queue-max", str(QUEUE_MAX)), auth=True
    )
    services = [*workers, router]
    try:
        for service in services:
            service.start()
        for service in services:
            await asyncio.to_thread(service.wait_healthy, 60)
        await asyncio.to_thread(wait_until, lambda: router_sees(router.url, 2), 10, "workers")
        a = await _tenant(redis, router.url, "Flood")
        b = await _tenant(redis, router.url, "Quiet")
        yield Stack(router, a, b)
    finally:
        for service in reversed(services):
            await asyncio.to_thread(service.stop)


async def request(
    session: ClientSession, tenant: Tenant, tokens: int, *, stream: bool
) -> tuple[int, float]:
    """(status, seconds to the first byte of the body)."""
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens,
        "stream": stream,
    }
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with session.post(tenant.url, json=body, headers=tenant.headers) as resp:
        await resp.content.readany()
        first_byte_s = loop.time() - started
        await resp.read()
        return resp.status, first_byte_s


def p99(values: list[float]) -> float:
    """Nearest-rank: of 20 values, the largest."""
    ordered = sorted(values)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


async def burst_of_b(session: ClientSession, stack: Stack) -> list[tuple[int, float]]:
    return await asyncio.gather(
        *(request(session, stack.b, B_TOKENS, stream=False) for _ in range(B_REQUESTS))
    )


async def test_a_flood_from_one_tenant_delays_only_that_tenant(stack: Stack) -> None:
    connector = TCPConnector(limit=0)
    async with ClientSession(connector=connector, timeout=ClientTimeout(total=60)) as session:
        for tenant in (stack.a, stack.b):  # warm: keys cached, connections open
            assert (await request(session, tenant, 1, stream=False))[0] == 200
        unloaded = await burst_of_b(session, stack)
        assert [status for status, _ in unloaded] == [200] * B_REQUESTS

        queue_full = asyncio.Event()

        async def flood_one() -> int:
            status, _ = await request(session, stack.a, A_TOKENS, stream=True)
            if status == 503:
                queue_full.set()
            return status

        flood = [asyncio.create_task(flood_one()) for _ in range(FLOOD)]
        await asyncio.wait_for(queue_full.wait(), 30)  # A alone has filled the queue
        loaded = await burst_of_b(session, stack)
        flood_statuses = await asyncio.gather(*flood)

    b_statuses = [status for status, _ in loaded]
    base, under_flood = p99([s for _, s in unloaded]), p99([s for _, s in loaded])
    figures = (
        f"B p99 first byte: {base * 1000:.0f} ms alone, {under_flood * 1000:.0f} ms under the "
        f"flood, {b_statuses.count(503)} refused; "
        f"A: {flood_statuses.count(200)} served, {flood_statuses.count(503)} refused"
    )
    print(figures)
    assert b_statuses == [200] * B_REQUESTS, figures
    assert under_flood < 2 * base, figures
    # A was served too, not starved: every slot and its queue place, less those B displaced
    assert flood_statuses.count(200) >= 2 * SLOTS + QUEUE_MAX - B_REQUESTS, figures
