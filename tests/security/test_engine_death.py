"""A worker whose engine died takes itself down: /health says 503 with the reason, the record
leaves the registry at once (the router stops choosing it), the streams in flight end cleanly,
and the process exits 3 so that its supervisor restarts it.

The fake engine stands in for a batched engine whose step loop died: `--fake-fail-after-tokens`
makes it fail for good after that many tokens, as tests/worker/test_batched_engine.py shows the
real step loop does when it dies."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from redis.asyncio import Redis

from benchmarks.processes import router_sees, wait_until
from contract.registry import read_snapshot
from tests.processes import MODEL_ID, HttpService, RedisServer, router_process, worker_process

from .services import CHAT, post_chat, running, sample, scrape

TOKENS_BEFORE_DEATH = 6
# Slow tokens: the second stream notices the failure up to a token gap later, which keeps the
# dying worker up (answering /health 503) long enough to watch it.
DYING = (
    *("--fake-fail-after-tokens", str(TOKENS_BEFORE_DEATH)),
    *("--fake-tokens-per-s", "5", "--slots", "2"),
)
EXIT_ENGINE_FAILED = 3


def _stream(url: str) -> bytes:
    """A streamed chat completion straight to one worker; the whole SSE body."""
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]}
    request = urllib.request.Request(
        url + CHAT,
        data=json.dumps({**body, "max_tokens": 50, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        data: bytes = response.read()
        return data


def _watch_health(worker: HttpService, seen: list[tuple[int, str]], stop: threading.Event) -> None:
    """Every /health answer until the process is gone (or `stop`): (status, state)."""
    while not stop.is_set() and worker.alive():
        try:
            with urllib.request.urlopen(worker.url + "/health", timeout=1) as response:
                seen.append((response.status, json.loads(response.read())["state"]))
        except urllib.error.HTTPError as exc:
            seen.append((exc.code, json.loads(exc.read())["state"]))
        except OSError:
            pass  # closing its listener on the way out
        time.sleep(0.01)


async def _registered(redis_url: str) -> set[str]:
    redis: Redis[bytes] = Redis.from_url(redis_url)
    try:
        return set((await read_snapshot(redis)).workers)
    finally:
        await redis.aclose()  # type: ignore[attr-defined]  # types-redis predates it


@pytest.mark.timeout(90)
def test_a_worker_whose_engine_died_leaves_and_exits_3(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url
    dying = worker_process(tmp_path, url, "w-dying", engine="fake", extra=DYING)
    healthy = worker_process(tmp_path, url, "w-healthy", engine="fake")
    router = router_process(tmp_path, url)
    with running(dying, healthy, router), ThreadPoolExecutor(3) as pool:
        wait_until(lambda: router_sees(router.url, 2), 10, "the router to see both workers")
        seen: list[tuple[int, str]] = []
        stop = threading.Event()
        watcher = pool.submit(_watch_health, dying, seen, stop)
        first = pool.submit(_stream, dying.url)
        time.sleep(0.1)  # the second stream's tokens fall between the first one's
        second = pool.submit(_stream, dying.url)

        # Both streams end cleanly: an error event, then [DONE].
        for stream in (first, second):
            body = stream.result(timeout=30)
            assert b'"error"' in body and body.endswith(b"data: [DONE]\n\n"), body
        died_at = time.monotonic()
        # The record is gone within a heartbeat or two (the LEAVE event: at once).
        wait_until(lambda: router_sees(router.url, 1), 1.0, "the router to drop the worker")
        assert "w-dying" not in asyncio.run(_registered(url))
        assert dying.proc is not None
        assert dying.proc.wait(timeout=15) == EXIT_ENGINE_FAILED
        stop.set()
        watcher.result(timeout=5)
        assert time.monotonic() - died_at < 10

        # /health said ready before, failed after, never ready again.
        assert seen[0] == (200, "ready")
        failed = seen.index((503, "failed"))
        assert all(answer == (503, "failed") for answer in seen[failed:]), seen
        assert "the engine failed" in dying.log()

        # Every request through the router is served by the healthy worker.
        before = sample(scrape(healthy.url), "worker_http_requests_total", route=CHAT)
        for _ in range(5):
            status, body = post_chat(router.url)
            assert status == 200, body
        after = sample(scrape(healthy.url), "worker_http_requests_total", route=CHAT)
        assert after - before == 5
