"""SIGTERM: a worker drains and deregisters; a router stops accepting and lets streams end."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
from redis.asyncio import Redis

from benchmarks.client import post_chat
from contract.registry import WorkerState, read_snapshot
from tests.processes import HttpService

from .conftest import Fleet
from .load import CHAT, chat_body, judge, report

pytestmark = pytest.mark.slow

JSON_HEADERS = {"Content-Type": "application/json"}
SLOW = ("--fake-tokens-per-s", "40")  # 40 tokens at 40/s: each stream lasts about 1 s


async def _stream(session: aiohttp.ClientSession, url: str, tokens: int = 40) -> tuple[int, str]:
    """(status, outcome kind) of one stream; (0, the client error) when no answer came."""
    body = chat_body(stream=True, max_tokens=tokens)
    done = await post_chat(session, url + CHAT, body, JSON_HEADERS, stream=True)
    if done.status == 0:
        return 0, done.error or ""
    return done.status, judge(done).kind if done.status == 200 else done.error_body.decode()


def _wait_exit(proc: HttpService, timeout_s: float) -> int | None:
    assert proc.proc is not None
    return proc.proc.wait(timeout_s)


async def test_worker_sigterm_drains_then_deregisters(fleet: Fleet) -> None:
    worker = await fleet.aworker("w0", *SLOW)
    redis: Redis[bytes] = Redis.from_url(fleet.redis.url)
    try:
        async with aiohttp.ClientSession() as session:
            streams = [asyncio.create_task(_stream(session, worker.url)) for _ in range(3)]
            await asyncio.sleep(0.3)  # all three are generating
            started = time.monotonic()
            worker.signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            # Draining: still listening, refuses new work with 503, and says so in the registry.
            async with session.post(
                worker.url + CHAT, data=chat_body(stream=False, max_tokens=2), headers=JSON_HEADERS
            ) as resp:
                refused = resp.status, resp.headers.get("Retry-After")
            state = (await read_snapshot(redis)).workers["w0"].state
            finished = await asyncio.gather(*streams)
            code = await asyncio.to_thread(_wait_exit, worker, 15)
            exited_s = time.monotonic() - started
            registered = "w0" in (await read_snapshot(redis)).workers
    finally:
        await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it
    report(
        "worker SIGTERM with 3 streams in flight",
        {
            "new_request_while_draining": refused,
            "registry_state_while_draining": state.value,
            "in_flight_streams": [kind for _, kind in finished],
            "exit_code": code,
            "exited_after_s": round(exited_s, 2),
            "still_registered_after_exit": registered,
        },
    )
    assert refused == (503, "1")
    assert state is WorkerState.DRAINING
    assert finished == [(200, "ok")] * 3  # in-flight work finished
    assert code == 0
    assert exited_s < 5
    assert not registered


async def test_router_sigterm_stops_accepting_and_lets_streams_finish(fleet: Fleet) -> None:
    await fleet.aworker("w0", *SLOW)
    router = await asyncio.to_thread(fleet.router, workers=1)
    async with aiohttp.ClientSession() as session:
        streams = [asyncio.create_task(_stream(session, router.url)) for _ in range(4)]
        await asyncio.sleep(0.3)
        started = time.monotonic()
        router.signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as fresh:  # a new connection
            status, error = await _stream(fresh, router.url, tokens=2)
        # Any connection failure (refused, reset) counts; a timeout does not.
        refused = "refused" if status == 0 and error != "timeout" else "accepted"
        finished = await asyncio.gather(*streams)
        code = await asyncio.to_thread(_wait_exit, router, 15)
        exited_s = time.monotonic() - started
    report(
        "router SIGTERM with 4 streams in flight",
        {
            "new_connection_after_sigterm": refused,
            "in_flight_streams": [kind for _, kind in finished],
            "exit_code": code,
            "exited_after_s": round(exited_s, 2),
        },
    )
    assert refused == "refused"
    assert finished == [(200, "ok")] * 4
    assert code == 0
    assert exited_s < 5
