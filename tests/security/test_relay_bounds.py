"""Bounded relay, against a real router process: an upstream that never closes a frame, a plain
answer too big to relay, a stream that never ends, and a slow answer that must not put its
worker aside.

The "worker" is a tiny aiohttp server in the test, registered in Redis as a worker's heartbeat
would; what it does depends on the request's message text. The router runs with small bounds
and a breaker that opens on one failure and stays open long, so a timeout that wrongly counted
against the worker would show at once as the next request's 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import ClientSession, ClientTimeout, web
from pytest_aiohttp import AiohttpServer
from redis.asyncio import Redis

from benchmarks.processes import router_sees
from contract.registry import publish_worker
from tests.processes import HttpService, RedisServer, router_process, wait_until
from tests.router.fakes import MODEL, PLAIN_BODY, TTL_MS, make_record, sse_frame

CHAT = "/v1/chat/completions"
MiB = 1024 * 1024
UNFRAMED_TOTAL = 24 * MiB  # what the upstream would send without a frame boundary
FIRST_TOKEN_S = 0.5
ROUTER_FLAGS = (
    "--max-frame-bytes", str(MiB),
    "--max-response-bytes", str(MiB),
    "--max-stream-s", "1",
    "--first-token-timeout-s", str(FIRST_TOKEN_S),
    "--read-timeout-s", "5",
    "--breaker-failures", "1",
    "--breaker-open-s", "30",
    "--queue-timeout-s", "1",
)  # fmt: skip


@dataclass
class Upstream:
    """The fake worker's behaviours, by the request's message text, and what it saw."""

    sent: int = 0  # bytes of the unframed stream written so far
    requests: list[str] = field(default_factory=list)
    dropped: asyncio.Event = field(default_factory=asyncio.Event)  # the router hung up on it

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CHAT, self._chat)
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        mode = orjson.loads(await request.read())["messages"][0]["content"]
        self.requests.append(mode)
        try:
            if mode == "slow":
                await asyncio.sleep(FIRST_TOKEN_S * 3)
                return web.Response(body=PLAIN_BODY, content_type="application/json")
            if mode == "ok":
                return web.Response(body=PLAIN_BODY, content_type="application/json")
            if mode == "huge":  # chunked: the router cannot know the size up front
                response = web.StreamResponse(headers={"Content-Type": "application/json"})
                await response.prepare(request)
                for _ in range(4):
                    await response.write(b" " * MiB)
                await response.write_eof()
                return response
            return await self._stream(request, mode)
        except (asyncio.CancelledError, ConnectionResetError):
            self.dropped.set()
            raise

    async def _stream(self, request: web.Request, mode: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if mode == "unframed":  # a frame that never ends
            piece = b"data: " + b"x" * (64 * 1024 - 6)
            while self.sent < UNFRAMED_TOTAL:
                await response.write(piece)
                self.sent += len(piece)
        else:  # endless: a well-formed frame every 50 ms, for ever
            while True:
                await response.write(sse_frame("tick"))
                await asyncio.sleep(0.05)
        await response.write_eof()
        return response


@dataclass
class Stack:
    router: HttpService
    upstream: Upstream
    session: ClientSession

    async def post(self, mode: str, *, stream: bool = False) -> tuple[int, bytes]:
        body = {"model": MODEL, "messages": [{"role": "user", "content": mode}], "stream": stream}
        async with self.session.post(self.router.url + CHAT, json=body) as resp:
            return resp.status, await resp.read()

    def peak_rss_kib(self) -> int:
        """The router process's peak resident memory so far (VmHWM)."""
        status = Path(f"/proc/{self.router.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1])


@pytest.fixture
async def stack(
    tmp_path: Path, redis_server: RedisServer, redis: Redis[bytes], aiohttp_server: AiohttpServer
) -> AsyncIterator[Stack]:
    upstream = Upstream()
    server = await aiohttp_server(upstream.app())
    url = str(server.make_url("")).rstrip("/")
    await publish_worker(redis, make_record("w1", url, slots=4), TTL_MS)
    router = router_process(tmp_path, redis_server.url, extra=ROUTER_FLAGS)
    router.start()
    try:
        await asyncio.to_thread(router.wait_healthy, 30)
        await asyncio.to_thread(wait_until, lambda: router_sees(router.url, 1), 10, "the worker")
        async with ClientSession(timeout=ClientTimeout(total=20)) as session:
            yield Stack(router, upstream, session)
    finally:
        await asyncio.to_thread(router.stop)


def events(body: bytes) -> list[bytes]:
    return body.split(b"\n\n")[:-1]


def error_code(frame: bytes) -> str:
    code: str = orjson.loads(frame.removeprefix(b"data: "))["error"]["code"]
    return code


async def test_an_unframed_stream_ends_in_an_sse_error_with_memory_bounded(stack: Stack) -> None:
    assert await stack.post("ok") == (200, PLAIN_BODY)  # warm: the baseline counts the relay
    before = stack.peak_rss_kib()
    status, body = await stack.post("unframed", stream=True)
    assert status == 200
    *_, error, done = events(body)
    assert error_code(error) == "upstream_error"
    assert done == b"data: [DONE]"
    assert len(body) < 4096  # the partial frame is dropped, not relayed
    await asyncio.wait_for(stack.upstream.dropped.wait(), 5)
    assert stack.upstream.sent < UNFRAMED_TOTAL / 2  # the router hung up early
    grown_mib = (stack.peak_rss_kib() - before) / 1024
    assert grown_mib < 8, f"the router's peak memory grew by {grown_mib:.1f} MiB"


async def test_a_plain_answer_over_the_limit_is_502(stack: Stack) -> None:
    status, body = await stack.post("huge")
    assert status == 502
    assert orjson.loads(body)["error"]["code"] == "upstream_error"
    assert await stack.post("ok") == (200, PLAIN_BODY)


async def test_a_stream_past_its_duration_ends_in_an_sse_error(stack: Stack) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body = await stack.post("endless", stream=True)
    elapsed = loop.time() - started
    assert status == 200
    assert 0.9 < elapsed < 5
    *frames, error, done = events(body)
    assert len(frames) >= 5  # it was relayed until then
    assert error_code(error) == "timeout"
    assert done == b"data: [DONE]"
    await asyncio.wait_for(stack.upstream.dropped.wait(), 5)


async def test_a_slow_answer_is_504_and_does_not_put_its_worker_aside(stack: Stack) -> None:
    status, body = await stack.post("slow")
    assert status == 504
    assert orjson.loads(body)["error"]["code"] == "timeout"
    # One counted failure would open this router's breaker for 30 s: the next request would
    # wait for the worker and get 503 after the 1 s queue timeout.
    assert await stack.post("ok") == (200, PLAIN_BODY)
    assert stack.upstream.requests == ["slow", "ok"]
