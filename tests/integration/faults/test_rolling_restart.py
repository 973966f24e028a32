"""A rolling restart of every worker under steady load loses no request."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from tests.processes import HttpService

from .conftest import Fleet
from .load import Load, metric, report, running

pytestmark = pytest.mark.slow

WORKERS = 3
BOUND_S = 15.0


async def test_rolling_restart_of_every_worker_loses_nothing(fleet: Fleet) -> None:
    workers = [await fleet.aworker(f"w{i}") for i in range(WORKERS)]
    router = await asyncio.to_thread(fleet.router, workers=WORKERS)
    # 0.6 s streams: every SIGTERM lands while the worker is in the middle of some.
    load = Load(router.url, concurrency=12, stream=True, max_tokens=60, bound_s=BOUND_S)
    drains_s: list[float] = []
    exit_codes: list[int | None] = []
    async with running(load):
        await asyncio.sleep(1.5)
        for i in range(WORKERS):
            old = workers[i]
            # SIGTERM: drain (refuse new work, finish in-flight), deregister, exit.
            started = time.monotonic()
            old.signal(signal.SIGTERM)
            exit_codes.append(await asyncio.to_thread(_wait_exit, old))
            drains_s.append(round(time.monotonic() - started, 2))
            workers[i] = await fleet.aworker(f"w{i}-new")
            await fleet.await_workers(router, WORKERS)
            await asyncio.sleep(1.0)
    async with aiohttp.ClientSession() as session, session.get(router.url + "/metrics") as resp:
        text = await resp.text()
    figures = load.summary()
    figures["workers_restarted"] = WORKERS
    figures["worker_exit_codes"] = exit_codes
    figures["drain_to_exit_s"] = drains_s
    figures["router_retries"] = metric(text, "router_upstream_retries_total")
    figures["upstream_busy_503"] = metric(text, "router_upstream_errors_total", kind="busy")
    report("rolling restart of 3 workers under streaming load (12 clients)", figures)

    assert exit_codes == [0] * WORKERS
    assert figures["hangs"] == 0, figures
    assert figures["dirty"] == 0, figures
    assert figures["clean_errors"] == 0, figures  # zero failed requests
    assert figures["ok"] == figures["requests"] > 0


def _wait_exit(proc: HttpService) -> int | None:
    assert proc.proc is not None
    return proc.proc.wait(20)
