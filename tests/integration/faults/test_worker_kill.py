"""Workers killed with -9 under steady streaming load, each restarted at once."""

from __future__ import annotations

import asyncio

import pytest

from tests.processes import HttpService

from .conftest import Fleet
from .load import Load, metric, report, running

pytestmark = pytest.mark.slow

WORKERS = 3
KILLS = 5
KILL_EVERY_S = 3.0
BOUND_S = 15.0  # no request may take longer (first-token 10 s + read gap 5 s at most)


async def _metrics_text(router: HttpService) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(router.url + "/metrics") as resp:
        return await resp.text()


async def test_kill_minus_nine_under_streaming_load(fleet: Fleet) -> None:
    workers = [await fleet.aworker(f"w{i}") for i in range(WORKERS)]
    router = await asyncio.to_thread(fleet.router, workers=WORKERS)
    load = Load(router.url, concurrency=12, stream=True, max_tokens=20, bound_s=BOUND_S)
    killed_at: list[float] = []
    async with running(load):
        await asyncio.sleep(1.5)
        for n in range(KILLS):
            i = n % WORKERS
            victim = workers[i]
            killed_at.append(len(load.outcomes))
            victim.kill()  # SIGKILL by PID: no drain, no deregistration
            # Restarted at once under the same id, on a new port, as a supervisor would.
            workers[i] = await fleet.aworker(victim.name)
            await asyncio.sleep(KILL_EVERY_S)
        await fleet.await_workers(router, WORKERS)
        await asyncio.sleep(1.0)
    text = await _metrics_text(router)
    figures = load.summary()
    figures["kills"] = KILLS
    figures["router_retries"] = metric(text, "router_upstream_retries_total")
    figures["upstream_errors"] = {
        kind: metric(text, "router_upstream_errors_total", kind=kind)
        for kind in ("connect", "broken", "status", "timeout", "busy")
    }
    figures["breaker_opens"] = metric(text, "router_breaker_transitions_total", state="open")
    report("kill -9 a worker every 3 s under streaming load (3 workers, 12 clients)", figures)

    assert figures["hangs"] == 0, figures
    assert figures["dirty"] == 0, figures
    assert figures["max_s"] < BOUND_S
    # Whatever had not started streaming went to a live worker: only streams cut mid-way fail.
    assert figures["errors_before_first_byte"] == 0, figures
    assert figures["ok"] >= 0.9 * figures["requests"], figures
    # Requests went elsewhere: the streams a kill cuts open the dead worker's breaker at once, so
    # new requests skip it (retries happen only when one reaches it first). A restarted worker
    # registers only once it listens, so it refuses none.
    assert figures["breaker_opens"] >= 1, figures
