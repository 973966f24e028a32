"""10,000 requests through one router: its memory and open files stay flat.

The mix exercises every exit path, not only the happy one: plain and streamed answers, malformed
bodies (400), unknown models (404), and clients that hang up mid-stream. RSS comes from
/proc/PID/status and open descriptors from /proc/PID/fd, both measured with the load paused and
the client's keep-alive connections open, after a warm-up and again at the end.

Bounds: RSS grows by less than 20 MB after the warm-up, and the router holds at most 10 more
descriptors than after it.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import orjson
import pytest

from .conftest import Fleet, open_fds, rss_kb
from .load import CHAT, chat_body, report

pytestmark = pytest.mark.slow

TOTAL = 10_000
WARM_UP = 1_000
CONCURRENCY = 32
RSS_BOUND_KB = 20 * 1024
FD_BOUND = 10
JSON_HEADERS = {"Content-Type": "application/json"}


async def _one(session: aiohttp.ClientSession, url: str, n: int) -> str:
    if n % 20 == 7:
        body, expect = b'{"model": "x", "messages": [', 400
    elif n % 20 == 13:
        body, expect = chat_body(stream=False, max_tokens=4, model="no-such-model"), 404
    else:
        body, expect = chat_body(stream=n % 2 == 0, max_tokens=4), 200
    async with session.post(url + CHAT, data=body, headers=JSON_HEADERS) as resp:
        if n % 50 == 24:  # a streaming client that hangs up after the first chunk
            await resp.content.readany()
            resp.close()
            return "hung_up"
        data = await resp.read()
        assert resp.status == expect, (resp.status, data[:200])
        if expect != 200:
            assert orjson.loads(data)["error"]["message"]
        return str(resp.status)


async def _phase(session: aiohttp.ClientSession, url: str, numbers: range) -> Counter[str]:
    counts: Counter[str] = Counter()
    it = iter(numbers)

    async def client() -> None:
        for n in it:
            counts[await asyncio.wait_for(_one(session, url, n), 15)] += 1

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    return counts


async def test_ten_thousand_requests_keep_memory_and_files_flat(fleet: Fleet) -> None:
    fast = ("--fake-ttft-ms", "0", "--fake-tokens-per-s", "0", "--slots", "16")
    await fleet.aworker("w0", *fast)
    await fleet.aworker("w1", *fast)
    router = await asyncio.to_thread(fleet.router, workers=2)
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        counts = await _phase(session, router.url, range(WARM_UP))
        await asyncio.sleep(0.5)
        rss_warm, fds_warm = rss_kb(router.pid), open_fds(router.pid)
        started = loop.time()
        counts += await _phase(session, router.url, range(WARM_UP, TOTAL))
        elapsed = loop.time() - started
        await asyncio.sleep(0.5)
        rss_end, fds_end = rss_kb(router.pid), open_fds(router.pid)
    figures = {
        "requests": sum(counts.values()),
        "by_outcome": dict(sorted(counts.items())),
        "rate_after_warm_up_rps": round((TOTAL - WARM_UP) / elapsed),
        "rss_after_warm_up_mb": round(rss_warm / 1024, 1),
        "rss_at_end_mb": round(rss_end / 1024, 1),
        "rss_growth_mb": round((rss_end - rss_warm) / 1024, 2),
        "fds_after_warm_up": fds_warm,
        "fds_at_end": fds_end,
        "bounds": f"RSS growth < {RSS_BOUND_KB // 1024} MB, fds <= warm-up + {FD_BOUND}",
    }
    report("10,000 requests through one router (32 clients, mixed outcomes)", figures)

    assert figures["requests"] == TOTAL
    assert rss_end - rss_warm < RSS_BOUND_KB, figures
    assert fds_end <= fds_warm + FD_BOUND, figures
