"""The worker app end to end with the fake engine: wire format, errors, slots, registry."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from contract.registry import WorkerState, read_snapshot, worker_key
from contract.wire import SamplingParams
from tests.waits import eventually
from worker import appkeys
from worker.engine import OnPrompt, Output, Prompt
from worker.fake_engine import FakeEngine

from .conftest import MODEL, RefusingEngine, StartWorker, WorkerClient

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Say something please"}]  # 3 words + 4 = 7 prompt tokens


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": USER, **fields}


def sse_events(raw: bytes) -> list[Any]:
    """Split an SSE body into decoded events; "[DONE]" stays a string. Asserts the framing."""
    assert raw.endswith(b"\n\n")
    events: list[Any] = []
    for frame in raw[:-2].split(b"\n\n"):
        assert frame.startswith(b"data: "), frame
        data = frame[len(b"data: ") :]
        events.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return events


async def health(client: WorkerClient) -> dict[str, Any]:
    resp = await client.get("/health")
    body: dict[str, Any] = await resp.json()
    return body


class RecordingEngine(FakeEngine):
    """The fake engine, counting streams that are still open (not closed by the worker)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.open_streams = 0

    async def stream(
        self, messages: Prompt, params: SamplingParams, on_prompt: OnPrompt | None = None
    ) -> AsyncIterator[Output]:
        self.open_streams += 1
        try:
            async for item in super().stream(messages, params, on_prompt):
                yield item
        finally:
            self.open_streams -= 1


# --- the OpenAI wire format ------------------------------------------------------------------


async def test_non_stream_has_openai_shape(start_worker: StartWorker) -> None:
    client = await start_worker()
    resp = await client.post(CHAT, json=chat())
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert list(body) == [
        "id", "object", "created", "model", "choices", "usage", "system_fingerprint"
    ]  # fmt: skip
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert abs(body["created"] - time.time()) < 5
    assert body["model"] == MODEL
    assert body["system_fingerprint"] is None
    content = " The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 16,
        "total_tokens": 23,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_stream_frames_are_exact(start_worker: StartWorker) -> None:
    client = await start_worker()
    resp = await client.post(CHAT, json=chat(stream=True, max_tokens=3))
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    events = sse_events(await resp.read())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1
    assert ids.pop().startswith("chatcmpl-")
    assert len({c["created"] for c in chunks}) == 1
    for c in chunks:
        assert list(c) == ["id", "object", "created", "model", "system_fingerprint", "choices"]
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == MODEL
        assert c["system_fingerprint"] is None
    choices = [c["choices"] for c in chunks]
    assert choices == [
        [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
          "finish_reason": None}],
        [{"index": 0, "delta": {"content": " The"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " quick"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": " brown"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}],
    ]  # fmt: skip


async def test_stream_usage_chunk(start_worker: StartWorker) -> None:
    client = await start_worker()
    body = chat(stream=True, max_tokens=2, stream_options={"include_usage": True})
    events = sse_events(await (await client.post(CHAT, json=body)).read())
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    for c in chunks:
        assert c["usage"] is None
        assert len(c["choices"]) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    assert usage_chunk["id"] == chunks[0]["id"]
    assert usage_chunk["usage"] == {
        "prompt_tokens": 7,
        "completion_tokens": 2,
        "total_tokens": 9,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_max_tokens_ends_with_length(start_worker: StartWorker) -> None:
    client = await start_worker()
    body = await (await client.post(CHAT, json=chat(max_tokens=3))).json()
    assert body["choices"][0]["message"]["content"] == " The quick brown"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


async def test_stop_string_across_tokens_is_cut_and_never_sent(start_worker: StartWorker) -> None:
    client = await start_worker()
    body = await (await client.post(CHAT, json=chat(stop=["n fo", "zzz"]))).json()
    assert body["choices"][0]["message"]["content"] == " The quick brow"
    assert body["choices"][0]["finish_reason"] == "stop"

    events = sse_events(await (await client.post(CHAT, json=chat(stream=True, stop="n fo"))).read())
    deltas = [e["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert "".join(d for d in deltas if d) == " The quick brow"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (orjson.dumps({"model": MODEL}), "messages"),
        (orjson.dumps(chat(temperature=3)), "temperature"),
        (orjson.dumps(chat(stop=["a", "b", "c", "d", "e"])), "stop"),
    ],
)
async def test_invalid_requests_are_400(
    start_worker: StartWorker, body: bytes, param: str | None
) -> None:
    client = await start_worker()
    resp = await client.post(CHAT, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


async def test_unknown_model_is_404(start_worker: StartWorker) -> None:
    client = await start_worker()
    resp = await client.post(CHAT, json={**chat(), "model": "gpt-4"})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "model_not_found"


async def test_context_length_exceeded_is_a_clean_400_even_when_streaming(
    start_worker: StartWorker,
) -> None:
    client = await start_worker(n_ctx=16)
    long = [{"role": "user", "content": "word " * 20}]
    for stream in (False, True):
        resp = await client.post(CHAT, json={"model": MODEL, "messages": long, "stream": stream})
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["code"] == "context_length_exceeded"
        assert error["param"] == "messages"
        assert "maximum context length is 16 tokens" in error["message"]


async def test_http_errors_are_openai_shaped(start_worker: StartWorker) -> None:
    client = await start_worker()
    resp = await client.get("/v1/nope")
    assert resp.status == 404
    assert (await resp.json())["error"]["type"] == "invalid_request_error"
    resp = await client.get(CHAT)
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    resp = await client.post(CHAT, data=io.BytesIO(b"x" * (4 * 1024 * 1024 + 1)))
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"


async def test_engine_failure_before_output_is_500_without_details(
    start_worker: StartWorker,
) -> None:
    client = await start_worker(RefusingEngine(RuntimeError("engine exploded")))
    resp = await client.post(CHAT, json=chat(stream=True))
    assert resp.status == 500
    body = await resp.json()
    assert body["error"]["type"] == "server_error"
    assert "exploded" not in str(body)
    assert (await health(client))["running"] == 0


async def test_engine_failure_mid_stream_sends_sse_error_then_done(
    start_worker: StartWorker,
) -> None:
    client = await start_worker(RefusingEngine(RuntimeError("engine exploded"), after_text=True))
    resp = await client.post(CHAT, json=chat(stream=True))
    assert resp.status == 200
    events = sse_events(await resp.read())
    assert events[1]["choices"][0]["delta"] == {"content": " partial"}
    assert events[-2]["error"]["type"] == "server_error"
    assert events[-1] == "[DONE]"
    metrics = await (await client.get("/metrics")).text()
    assert "worker_engine_errors_total 1.0" in metrics


# --- slots and cancellation ------------------------------------------------------------------


async def test_queue_full_is_503_and_load_is_exact(start_worker: StartWorker) -> None:
    engine = RecordingEngine(ttft_ms=0, tokens_per_s=20)
    client = await start_worker(engine, max_queue=1)
    slow = chat(max_tokens=100)
    running = asyncio.create_task(client.post(CHAT, json=slow))
    await eventually(lambda: client.app[appkeys.SLOTS].running == 1)
    waiting = asyncio.create_task(client.post(CHAT, json=slow))
    await eventually(lambda: client.app[appkeys.SLOTS].waiting == 1)
    assert await health(client) == {
        "status": "ok", "model": MODEL, "state": "ready", "running": 1, "waiting": 1, "slots": 1
    }  # fmt: skip

    resp = await client.post(CHAT, json=slow)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"]["type"] == "service_unavailable"

    # Both clients leave: the queued one leaves the queue, the running one stops generating.
    for task in (waiting, running):
        task.cancel()
    await asyncio.gather(running, waiting, return_exceptions=True)
    slots = client.app[appkeys.SLOTS]
    await eventually(lambda: (slots.running, slots.waiting) == (0, 0))
    await eventually(lambda: engine.open_streams == 0)


async def test_client_disconnect_mid_stream_stops_generation(start_worker: StartWorker) -> None:
    engine = RecordingEngine(ttft_ms=0, tokens_per_s=50)
    client = await start_worker(engine)
    resp = await client.post(CHAT, json=chat(stream=True, max_tokens=1000))
    assert (await resp.content.readline()).startswith(b"data: ")
    assert engine.open_streams == 1
    resp.close()  # the client hangs up mid-stream
    slots = client.app[appkeys.SLOTS]
    await eventually(lambda: engine.open_streams == 0 and slots.running == 0)
    assert (await health(client))["running"] == 0
    # The slot is free again: the next request runs at once.
    body = await (await client.post(CHAT, json=chat(max_tokens=2))).json()
    assert body["choices"][0]["finish_reason"] == "length"


async def test_client_disconnect_before_first_token_stops_generation(
    start_worker: StartWorker,
) -> None:
    engine = RecordingEngine(ttft_ms=5000, tokens_per_s=0)
    client = await start_worker(engine)
    request = asyncio.create_task(client.post(CHAT, json=chat()))
    await eventually(lambda: engine.open_streams == 1)
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)
    await eventually(lambda: engine.open_streams == 0 and client.app[appkeys.SLOTS].running == 0)


async def test_slots_run_concurrently_then_fifo(start_worker: StartWorker) -> None:
    client = await start_worker(slots=2, fake_tokens_per_s=200)
    slots = client.app[appkeys.SLOTS]
    requests = [asyncio.create_task(client.post(CHAT, json=chat(max_tokens=10))) for _ in range(5)]
    seen_running = 0
    while not all(r.done() for r in requests):
        seen_running = max(seen_running, slots.running)
        assert slots.running <= 2
        await asyncio.sleep(0.005)
    assert seen_running == 2
    assert all(r.result().status == 200 for r in requests)
    assert (slots.running, slots.waiting) == (0, 0)


# --- models, health, metrics -----------------------------------------------------------------


async def test_models(start_worker: StartWorker) -> None:
    client = await start_worker()
    listing = await (await client.get("/v1/models")).json()
    assert listing["object"] == "list"
    [model] = listing["data"]
    assert list(model) == ["id", "object", "created", "owned_by"]
    assert (model["id"], model["object"], model["owned_by"]) == (MODEL, "model", "xerotier")
    assert await (await client.get(f"/v1/models/{MODEL}")).json() == model
    resp = await client.get("/v1/models/other")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "model_not_found"


async def test_metrics_families(start_worker: StartWorker) -> None:
    client = await start_worker()
    await client.post(CHAT, json=chat(max_tokens=4))
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    for line in (
        'worker_http_requests_total{route="/v1/chat/completions",status_class="2xx"} 1.0',
        "worker_requests_running 0.0",
        "worker_requests_waiting 0.0",
        "worker_prompt_tokens_total 7.0",
        "worker_completion_tokens_total 4.0",
        "worker_generation_tokens_per_second_count 1.0",
        "worker_time_to_first_token_seconds_count 1.0",
        "worker_generation_seconds_count 1.0",
        "worker_queue_wait_seconds_count 1.0",
        "worker_model_load_seconds ",
        "worker_engine_errors_total 0.0",
    ):
        assert line in text


# --- registry --------------------------------------------------------------------------------


async def test_registers_heartbeats_load_drains_and_deregisters(
    start_worker: StartWorker, redis_url: str
) -> None:
    client = await start_worker(worker_id="w-reg", fake_tokens_per_s=40)
    redis: Redis[bytes] = Redis.from_url(redis_url)
    try:
        record = (await read_snapshot(redis)).workers["w-reg"]
        assert (record.model, record.state, record.slots, record.max_queue) == (
            MODEL, WorkerState.READY, 1, 64
        )  # fmt: skip
        assert 0 < await redis.pttl(worker_key("w-reg")) <= 1000

        # A new request is published well before the next interval would.
        stream = await client.post(CHAT, json=chat(stream=True, max_tokens=12))
        first = await stream.content.readuntil(b"\n\n")

        async def published_running() -> bool:
            return (await read_snapshot(redis)).workers["w-reg"].running == 1

        await eventually(published_running, timeout_s=1.0)

        # Drain: refused with 503, advertised as draining, and the in-flight stream completes.
        drain = asyncio.create_task(client.app[appkeys.HEARTBEAT].drain())
        await eventually(lambda: client.app[appkeys.SLOTS].draining)
        resp = await client.get("/health")
        assert resp.status == 503
        assert (await resp.json())["state"] == "draining"
        refused = await client.post(CHAT, json=chat())
        assert refused.status == 503
        assert "Retry-After" in refused.headers
        assert (await read_snapshot(redis)).workers["w-reg"].state == WorkerState.DRAINING
        assert sse_events(first + await stream.read())[-1] == "[DONE]"
        await asyncio.wait_for(drain, 2)

        await client.close()
        assert "w-reg" not in (await read_snapshot(redis)).workers
        assert await redis.exists(worker_key("w-reg")) == 0
    finally:
        await redis.aclose()  # type: ignore[attr-defined]


async def test_worker_serves_while_redis_is_down(start_worker: StartWorker) -> None:
    client = await start_worker(redis_url="redis://127.0.0.1:1/0")
    assert (await health(client))["status"] == "ok"
    resp = await client.post(CHAT, json=chat(max_tokens=1))
    assert resp.status == 200
