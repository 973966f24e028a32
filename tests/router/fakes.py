"""Fakes for router tests: fake workers, records, and waiting (redis: tests.processes)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDictProxy

from contract.registry import WorkerRecord, WorkerState, now_ms
from tests.processes import RedisServer, free_port

__all__ = ["RedisServer", "free_port"]

MODEL = "smollm2-135m"
TTL_MS = 60_000  # app tests outlive no record; ageing tests use their own short times


def make_record(
    worker_id: str,
    url: str,
    *,
    model: str = MODEL,
    running: int = 0,
    waiting: int = 0,
    state: WorkerState = WorkerState.READY,
    slots: int = 4,
) -> WorkerRecord:
    now = now_ms()
    return WorkerRecord(
        worker_id=worker_id,
        model=model,
        url=url,
        state=state,
        slots=slots,
        running=running,
        waiting=waiting,
        max_queue=16,
        device="cpu",
        started_ms=now,
        heartbeat_ms=now,
    )


# The fake worker's canned answers; odd spacing and non-ASCII prove the relay is byte-exact.
PLAIN_BODY = (
    b'{"id":"chatcmpl-fake", "object":"chat.completion","created":1,"model":"smollm2-135m",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"h\xc3\xa9llo"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}'
)


def sse_frame(content: str, finish: str | None = None) -> bytes:
    delta = f'{{"content":"{content}"}}' if content else "{}"
    reason = f'"{finish}"' if finish else "null"
    return (
        b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1,'
        b'"model":"smollm2-135m","choices":[{"index":0,"delta":' + delta.encode() + b","
        b'"finish_reason":' + reason.encode() + b"}]}\n\n"
    )


_STATUS = {"busy": 503, "error": 500}
STREAM_FRAMES = [sse_frame("Hel"), sse_frame("lo"), sse_frame("", "stop"), b"data: [DONE]\n\n"]


@dataclass
class FakeWorker:
    """What a fake worker does and what it saw. `mode` picks the behaviour of the next request:

    ok       plain JSON or SSE (split across writes at odd places)
    busy     503, as a full worker answers
    error    500, as a broken worker answers
    die      two SSE frames and half a third, then the connection drops
    hang     one SSE frame (or, not streaming, nothing) until the client goes away
    silent   SSE headers and then nothing (not streaming: as hang)

    While `gate` is set to an unset Event, every request waits for it before answering (after
    counting itself in `active`), so a test can hold requests on the worker.
    """

    worker_id: str
    mode: str = "ok"
    url: str = ""
    bodies: list[bytes] = field(default_factory=list)
    headers: list[CIMultiDictProxy[str]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    paths: list[str] = field(default_factory=list)  # the path of each request, in order
    gate: asyncio.Event | None = None
    active: int = 0  # requests inside the handler now
    peak: int = 0  # most requests inside the handler at once

    def app(self) -> web.Application:
        app = web.Application()
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            app.router.add_post(path, self._chat)  # the relay is the same for every endpoint
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await self._answer(request)
        finally:
            self.active -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.bodies.append(body)
        self.paths.append(request.path)
        self.headers.append(request.headers)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.mode in _STATUS:
            return web.json_response({"error": {"message": self.mode}}, status=_STATUS[self.mode])
        if b'"stream":true' not in body.replace(b" ", b""):
            if self.mode in ("hang", "silent"):
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    self.cancelled.set()
                    raise
            return web.Response(body=PLAIN_BODY, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if self.mode == "ok":
                data = b"".join(STREAM_FRAMES)
                for cut in (7, 60, len(STREAM_FRAMES[0]) - 64, 3, 250, len(data)):
                    await response.write(data[:cut])
                    data = data[cut:]
                    await asyncio.sleep(0.005)
            elif self.mode == "die":
                await response.write(STREAM_FRAMES[0] + STREAM_FRAMES[1] + STREAM_FRAMES[2][:20])
                await asyncio.sleep(0.1)
                assert request.transport is not None
                request.transport.abort()
                return response
            elif self.mode == "hang":
                await response.write(STREAM_FRAMES[0])
                await asyncio.sleep(30)
            elif self.mode == "silent":
                await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        await response.write_eof()
        return response


class StartWorker(Protocol):
    def __call__(
        self,
        worker_id: str,
        *,
        mode: str = "ok",
        model: str = MODEL,
        running: int = 0,
        state: WorkerState = WorkerState.READY,
        slots: int = 4,
    ) -> Awaitable[FakeWorker]: ...


RouterFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
