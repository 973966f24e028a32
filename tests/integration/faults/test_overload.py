"""Overload: far more clients than slots. The router admits up to each worker's slots, queues a
bounded number, and refuses the rest at once with 503 + Retry-After; nothing hangs."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from .conftest import Fleet
from .load import Load, metric, report, running

pytestmark = pytest.mark.slow

QUEUE_MAX = 10


async def test_overload_is_queued_then_refused_cleanly(fleet: Fleet) -> None:
    # max-queue 0: a worker refuses (503) anything beyond its slots, so any over-admission by
    # the router would show up as an upstream "busy" error.
    for i in range(2):
        await fleet.aworker(f"w{i}", "--slots", "2", "--max-queue", "0")
    router = await asyncio.to_thread(
        fleet.router, "--queue-max", str(QUEUE_MAX), "--queue-timeout-s", "2", workers=2
    )
    load = Load(router.url, concurrency=30, stream=True, max_tokens=20, bound_s=10)
    peak_queue = 0.0
    async with aiohttp.ClientSession() as session:
        async with running(load):
            for _ in range(25):
                await asyncio.sleep(0.2)
                async with session.get(router.url + "/metrics") as resp:
                    text = await resp.text()
                peak_queue = max(peak_queue, metric(text, "router_queue_length"))
        async with session.get(router.url + "/metrics") as resp:
            text = await resp.text()
    figures = load.summary()
    figures["slots_total"] = 4
    figures["peak_queue_length"] = peak_queue
    figures["queue_rejections"] = {
        reason: metric(text, "router_queue_rejections_total", reason=reason)
        for reason in ("full", "timeout")
    }
    figures["worker_busy_503s"] = metric(text, "router_upstream_errors_total", kind="busy")
    figures["queue_wait_count"] = metric(text, "router_queue_wait_seconds_count")
    report("overload: 30 streaming clients, 2 workers x 2 slots, queue of 10", figures)

    assert figures["hangs"] == 0, figures
    assert figures["dirty"] == 0, figures
    assert figures["worker_busy_503s"] == 0  # never more than its slots on a worker
    assert 0 < peak_queue <= QUEUE_MAX
    assert figures["ok"] > 0
    assert set(figures["error_codes"]) <= {"queue_full", "queue_timeout"}, figures
    assert figures["errors_before_first_byte"] == figures["clean_errors"] > 0
