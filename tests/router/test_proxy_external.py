"""A stock OpenAI server as a worker (record `api: openai`): no usage trailer is asked of it, and a
metered stream gets its usage from the server's own usage chunk, which the router asks for and
hides from a client that did not ask for it. Requests without a key go through byte for byte.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDictProxy
from pytest_aiohttp import AiohttpServer
from redis.asyncio import Redis

from contract.registry import WorkerApi, publish_worker
from contract.sse import USAGE_TRAILER_HEADER
from router.exchange import TokenMeter, take_openai_usage
from tests.router.test_handlers_metering import charged, headers, new_key

from .fakes import MODEL, TTL_MS, RouterFactory, make_record

CHAT = "/v1/chat/completions"
USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def chunk(choices: list[Any], **extra: Any) -> bytes:
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": MODEL}
    return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"


def delta(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}


FRAMES = [chunk([delta("a")]), chunk([delta("b")]), chunk([delta("", "stop")])]
USAGE_FRAME = chunk([], usage=USAGE)  # llama-server's and OpenAI's form
DONE = b"data: [DONE]\n\n"


@dataclass
class StockServer:
    """llama-server's chat API as far as the router sees it: usage only when asked for."""

    bodies: list[bytes] = field(default_factory=list)
    headers: list[CIMultiDictProxy[str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CHAT, self._chat)
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.bodies.append(body)
        self.headers.append(request.headers)
        data = orjson.loads(body)
        if not data.get("stream"):
            answer = {"object": "chat.completion", "choices": [], "usage": USAGE}
            return web.json_response(answer)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        frames = list(FRAMES)
        if (data.get("stream_options") or {}).get("include_usage"):
            frames.append(USAGE_FRAME)
        for frame in [*frames, DONE]:
            await response.write(frame)
            await asyncio.sleep(0.002)
        await response.write_eof()
        return response


async def start_stock(aiohttp_server: AiohttpServer, redis: Redis[bytes]) -> StockServer:
    server = StockServer()
    url = str((await aiohttp_server(server.app())).make_url("")).rstrip("/")
    record = replace(make_record("stock", url), api=WorkerApi.OPENAI)
    await publish_worker(redis, record, TTL_MS)
    return server


def chat(stream: bool = True, usage: bool | None = None) -> bytes:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 20, "stream": stream}  # fmt: skip
    if usage is not None:
        body["stream_options"] = {"include_usage": usage}
    return orjson.dumps(body)


async def test_an_unmetered_request_reaches_it_byte_for_byte(
    aiohttp_server: AiohttpServer, redis: Redis[bytes], start_router: RouterFactory
) -> None:
    server = await start_stock(aiohttp_server, redis)
    client = await start_router()
    sent = chat() + b" "  # odd bytes a re-encoding would lose
    resp = await client.post(CHAT, data=sent, headers={"Content-Type": "application/json"})
    assert resp.status == 200
    assert await resp.read() == b"".join([*FRAMES, DONE])
    assert server.bodies == [sent]
    assert USAGE_TRAILER_HEADER not in server.headers[0]


async def test_a_metered_stream_asks_for_usage_and_hides_it_from_the_client(
    aiohttp_server: AiohttpServer, redis: Redis[bytes], start_router: RouterFactory
) -> None:
    server = await start_stock(aiohttp_server, redis)
    client = await start_router(auth=True)
    key = await new_key(redis)
    resp = await client.post(CHAT, data=chat(), headers=headers(key))
    assert await resp.read() == b"".join([*FRAMES, DONE])  # no usage chunk
    sent = orjson.loads(server.bodies[0])
    assert sent["stream_options"] == {"include_usage": True}
    assert USAGE_TRAILER_HEADER not in server.headers[0]
    got = await charged(redis, key)
    assert (got["prompt_tokens"], got["completion_tokens"]) == (7, 3)


async def test_a_client_that_asked_for_usage_gets_it_and_the_body_is_unchanged(
    aiohttp_server: AiohttpServer, redis: Redis[bytes], start_router: RouterFactory
) -> None:
    server = await start_stock(aiohttp_server, redis)
    client = await start_router(auth=True)
    key = await new_key(redis)
    sent = chat(usage=True)
    resp = await client.post(CHAT, data=sent, headers=headers(key))
    assert await resp.read() == b"".join([*FRAMES, USAGE_FRAME, DONE])
    assert server.bodies == [sent]
    got = await charged(redis, key)
    assert (got["prompt_tokens"], got["completion_tokens"]) == (7, 3)


async def test_a_metered_plain_answer_is_charged_from_its_usage_and_sent_unchanged(
    aiohttp_server: AiohttpServer, redis: Redis[bytes], start_router: RouterFactory
) -> None:
    server = await start_stock(aiohttp_server, redis)
    client = await start_router(auth=True)
    key = await new_key(redis)
    sent = chat(stream=False)
    resp = await client.post(CHAT, data=sent, headers=headers(key))
    assert resp.status == 200
    assert server.bodies == [sent]
    got = await charged(redis, key)
    assert (got["prompt_tokens"], got["completion_tokens"]) == (7, 3)


def test_a_usage_chunk_with_choices_loses_only_its_usage() -> None:
    meter = TokenMeter(100)
    last = chunk([delta("", "stop")], usage=USAGE)
    out = take_openai_usage(FRAMES[0] + last + DONE, meter, strip=True)
    assert out == FRAMES[0] + FRAMES[2] + DONE
    assert (meter.prompt_tokens, meter.completion_tokens, meter.exact) == (7, 3, True)


def test_frames_count_until_usage_arrives_and_null_usage_is_skipped() -> None:
    meter = TokenMeter(100)
    nulls = chunk([delta("a")], usage=None)
    assert take_openai_usage(nulls + FRAMES[1], meter, strip=True) == nulls + FRAMES[1]
    assert (meter.completion_tokens, meter.exact) == (2, False)
    assert take_openai_usage(USAGE_FRAME + DONE, meter, strip=False) == USAGE_FRAME + DONE
    assert (meter.completion_tokens, meter.exact) == (3, True)
