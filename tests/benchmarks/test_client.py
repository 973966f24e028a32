"""The one chat request and SSE reader (benchmarks.client.post_chat) against a fake server whose
answer the request's `mode` picks: what it records of streams that end well, badly or not at
all, and of error bodies."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from benchmarks.client import Exchange, post_chat

JSON = {"Content-Type": "application/json"}
OPENAI_ERROR = {"message": "busy", "type": "server_error", "param": None, "code": "queue_full"}


def event(data: object) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def delta(content: str) -> bytes:
    return event({"choices": [{"index": 0, "delta": {"content": content}}]})


async def chat(request: web.Request) -> web.StreamResponse:
    mode = (await request.json())["mode"]
    if mode == "busy":
        return web.json_response({"error": OPENAI_ERROR}, status=503)
    if mode == "plain":
        usage = {"prompt_tokens": 3, "completion_tokens": 2}
        choice = {"index": 0, "message": {"role": "assistant", "content": "a b"}}
        return web.json_response({"choices": [choice], "usage": usage})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    frames = {
        "ok": [delta(""), delta("a"), delta("b"), b"data: [DONE]\n\n"],
        "mid_error": [delta("a"), event({"error": OPENAI_ERROR}), b"data: [DONE]\n\n"],
        "first_error": [event({"error": OPENAI_ERROR}), b"data: [DONE]\n\n"],
        "after_done": [delta("a"), b"data: [DONE]\n\n", delta("b")],
        "not_json": [b"data: {nope\n\n", b"data: [DONE]\n\n"],
    }[mode]
    for frame in frames:
        await resp.write(frame)
    return resp


async def exchange(server_url: str, mode: str, stream: bool = True) -> Exchange:
    async with aiohttp.ClientSession() as session:
        body = orjson.dumps({"mode": mode})
        return await post_chat(session, server_url, body, JSON, stream=stream)


@pytest.fixture
async def url(aiohttp_server: AiohttpServer) -> str:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1/chat/completions"))


async def test_a_whole_stream(url: str) -> None:
    done = await exchange(url, "ok")
    assert done.ok and done.done and done.status == 200
    assert (done.events, done.content_events, len(done.itl_s)) == (3, 2, 1)
    assert done.ttfb_s is not None and done.ttft_s is not None
    assert done.ttfb_s <= done.ttft_s <= done.e2e_s


async def test_error_events_and_broken_streams(url: str) -> None:
    mid, first = await exchange(url, "mid_error"), await exchange(url, "first_error")
    assert mid.error == first.error == "sse_error:queue_full"
    assert (mid.events_before_error, first.events_before_error) == (1, 0)
    assert mid.done and first.done
    after = await exchange(url, "after_done")
    assert after.error == "no_done" and not after.done  # [DONE] must come last
    assert (await exchange(url, "not_json")).error == "bad_json"


async def test_bodies(url: str) -> None:
    busy = await exchange(url, "busy", stream=False)
    assert busy.status == 503 and busy.error == "http_503:queue_full"
    assert orjson.loads(busy.error_body) == {"error": OPENAI_ERROR}  # kept whole
    plain = await exchange(url, "plain", stream=False)
    assert plain.ok and plain.content_events == 1 and plain.ttft_s is None
    assert (plain.prompt_tokens, plain.completion_tokens) == (3, 2)
