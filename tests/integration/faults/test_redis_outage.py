"""Redis stopped for 10 s under load, then restarted empty: service goes on, the registry heals."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from redis.asyncio import Redis

from contract.registry import read_snapshot

from .conftest import Fleet
from .load import Load, metric, report, running

pytestmark = pytest.mark.slow

OUTAGE_S = 10.0
BOUND_S = 15.0


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as resp:
        return resp.status, await resp.text()


async def test_redis_outage_under_load(fleet: Fleet) -> None:
    await fleet.aworker("w0")
    await fleet.aworker("w1")
    router = await asyncio.to_thread(fleet.router, workers=2)
    load = Load(router.url, concurrency=8, stream=True, max_tokens=20, bound_s=BOUND_S)
    redis: Redis[bytes] = Redis.from_url(fleet.redis.url)
    session = aiohttp.ClientSession()
    try:
        async with running(load):
            await asyncio.sleep(1.5)
            before = len(load.outcomes)
            await asyncio.to_thread(fleet.redis.stop)
            stopped = time.monotonic()
            max_age = 0.0
            while time.monotonic() - stopped < OUTAGE_S:
                await asyncio.sleep(0.5)
                _, text = await _get(session, router.url + "/metrics")
                max_age = max(max_age, metric(text, "router_registry_staleness_seconds"))
                _, health = await _get(session, router.url + "/health")
            during = len(load.outcomes) - before
            health_during = health
            await asyncio.to_thread(fleet.redis.start)  # same port, and empty: it saved nothing
            back = time.monotonic()
            # Every worker re-registers by itself, without a restart.
            while len((await read_snapshot(redis)).workers) < 2:
                assert time.monotonic() - back < 10, "workers did not re-register"
                await asyncio.sleep(0.05)
            reregistered_s = time.monotonic() - back
            # The router reads a fresh registry again (its staleness drops back).
            while True:
                _, text = await _get(session, router.url + "/metrics")
                if metric(text, "router_registry_staleness_seconds") < 1.5:
                    break
                assert time.monotonic() - back < 10, "the router's registry stayed stale"
                await asyncio.sleep(0.1)
            fresh_s = time.monotonic() - back
            # A worker started after the recovery is seen and used.
            await fleet.aworker("w2")
            await fleet.await_workers(router, 3)
            seen_s = time.monotonic() - back
            await asyncio.sleep(2.0)
            _, text = await _get(session, router.url + "/metrics")
    finally:
        await session.close()
        await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it
    figures = load.summary()
    figures["outage_s"] = OUTAGE_S
    figures["requests_served_during_outage"] = during
    figures["router_health_during_outage"] = health_during
    figures["max_registry_staleness_during_outage_s"] = round(max_age, 1)
    figures["workers_reregistered_after_s"] = round(reregistered_s, 2)
    figures["router_registry_fresh_after_s"] = round(fresh_s, 2)
    figures["new_worker_seen_after_s"] = round(seen_s, 2)
    in_flight_w2 = metric(text, "router_upstream_errors_total", worker="w2")
    figures["registry_errors"] = {
        op: metric(text, "router_registry_errors_total", op=op) for op in ("read", "events")
    }
    report("Redis down for 10 s under streaming load, restarted empty", figures)

    assert figures["hangs"] == 0, figures
    assert figures["dirty"] == 0, figures
    assert figures["clean_errors"] == 0, figures  # service continued throughout
    assert during > 100  # it really served while Redis was down
    assert max_age >= OUTAGE_S - 2  # the staleness metric told the truth
    assert in_flight_w2 == 0
    assert await _served_by(fleet, "w2") > 0


async def _served_by(fleet: Fleet, worker_id: str) -> float:
    [proc] = [p for p in fleet.started if p.name == worker_id]
    async with aiohttp.ClientSession() as session:
        _, text = await _get(session, proc.url + "/metrics")
    return metric(text, "worker_completion_tokens_total")
