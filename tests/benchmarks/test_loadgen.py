"""Smoke tests of the benchmark load generator: counts, statuses and the order of the timings.

A small aiohttp app stands in for an OpenAI chat server (plain JSON and SSE); the last test runs
the router_overhead scenario's latency part, tiny, on the real stack (redis-server, one
fake-engine worker, one router). No timing thresholds: only that each figure exists and that
first byte <= first content <= last byte.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from benchmarks.client import Exchange
from benchmarks.loadgen import LoadGenerator, LoadSpec, percentile, run_load
from benchmarks.processes import free_port
from benchmarks.router_overhead import Params, measure_latency
from benchmarks.stack import Stack, StackConfig

WORDS = ("alpha", "beta", "gamma")
HITS = web.AppKey("hits", Counter[str])


async def chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    request.app[HITS][request.host] += 1
    if body["model"] == "missing":
        error = {"message": "no such model", "type": "invalid_request_error", "code": None}
        return web.json_response({"error": error}, status=404)
    if not body.get("stream"):
        message = {"role": "assistant", "content": " ".join(WORDS)}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return web.json_response({"object": "chat.completion", "choices": [choice]})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    deltas = [{"role": "assistant", "content": ""}, *({"content": w} for w in WORDS)]
    for delta in deltas:
        event = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
        await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def make_app() -> web.Application:
    app = web.Application()
    app[HITS] = Counter()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def assert_sane(t: Exchange) -> None:
    assert t.ok, t
    assert t.status == 200
    assert t.error is None
    assert t.ttfb_s is not None
    assert 0 < t.ttfb_s <= t.e2e_s


async def test_plain_bounded_by_count(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(make_app())
    spec = LoadSpec(
        urls=(str(server.make_url("/v1/chat/completions")),), model="m", concurrency=4, requests=25
    )
    result = await run_load(spec)
    assert len(result.timings) == 25
    assert result.ok_count == 25
    for t in result.timings:
        assert_sane(t)
        assert t.ttft_s is None and t.events == 0
    assert result.rps > 0
    summary = result.summary()
    assert summary["statuses"] == {"200": 25}
    e2e = summary["e2e"]
    assert 0 < e2e["min_ms"] <= e2e["p50_ms"] <= e2e["p99_ms"] <= e2e["max_ms"]
    assert "ttfc" not in summary


async def test_stream_timings_ordered(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(make_app())
    url = str(server.make_url("/v1/chat/completions"))
    async with LoadGenerator(pool=3) as gen:
        result = await gen.run(
            LoadSpec(urls=(url,), model="m", concurrency=3, requests=12, stream=True)
        )
        again = await gen.run(LoadSpec(urls=(url,), model="m", concurrency=2, requests=5))
    assert len(result.timings) == 12 and result.ok_count == 12
    for t in result.timings:
        assert_sane(t)
        assert t.ttft_s is not None and t.ttfb_s is not None
        assert t.ttfb_s <= t.ttft_s <= t.e2e_s
        assert t.events == len(WORDS) + 1  # the role-only delta, then one per word
        assert t.content_events == len(WORDS) and len(t.itl_s) == len(WORDS) - 1
    assert result.summary()["ttfc"]["p50_ms"] > 0
    assert again.ok_count == 5  # the generator's session is reused across runs


async def test_duration_bound_and_round_robin(aiohttp_server: AiohttpServer) -> None:
    app = make_app()
    server = await aiohttp_server(app)
    # Two names for the same server, so the Host header tells which URL each request used.
    urls = (
        f"http://127.0.0.1:{server.port}/v1/chat/completions",
        f"http://localhost:{server.port}/v1/chat/completions",
    )
    spec = LoadSpec(urls=urls, model="m", concurrency=2, duration_s=0.2)
    result = await run_load(spec)
    n = len(result.timings)
    assert n > 0 and result.ok_count == n
    assert result.wall_s >= 0.2  # closed loop: in-flight requests finish after the deadline
    hits = app[HITS]
    assert sum(hits.values()) == n
    assert abs(hits[f"127.0.0.1:{server.port}"] - hits[f"localhost:{server.port}"]) <= 1


async def test_failures_are_counted_not_raised(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(make_app())
    url = str(server.make_url("/v1/chat/completions"))
    missing = await run_load(
        LoadSpec(urls=(url,), model="missing", concurrency=2, requests=4, stream=True)
    )
    assert [t.status for t in missing.timings] == [404] * 4
    assert missing.ok_count == 0 and missing.rps == 0
    assert missing.summary()["e2e"] == {}  # only successful requests are described

    refused = await run_load(
        LoadSpec(urls=(f"http://127.0.0.1:{free_port()}/v1",), model="m", concurrency=1, requests=2)
    )
    assert [t.status for t in refused.timings] == [0, 0]
    assert all(t.error and t.ttfb_s is None for t in refused.timings)


def test_percentile_and_body() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    body = orjson.loads(
        LoadSpec(urls=("u",), model="m", concurrency=1, requests=1, stream=True).body()
    )
    assert body["model"] == "m" and body["stream"] is True and body["max_tokens"] == 8


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
async def test_latency_part_on_real_stack() -> None:
    params = Params(rounds=2, requests_per_round=10, concurrencies=(1, 3), warmup_requests=3)
    async with Stack(StackConfig(workers=1, slots=4, max_queue=16)) as stack:
        rows = await measure_latency(stack, params)
    assert not any(p.alive() for p in stack.procs)  # all stopped
    assert [(r["mode"], r["concurrency"]) for r in rows] == [
        ("plain", 1),
        ("plain", 3),
        ("stream", 1),
        ("stream", 3),
    ]
    for row in rows:
        for arm in ("direct", "router"):
            assert row[arm]["requests"] == row[arm]["ok"] == 20, row[arm]["errors"]
            assert 0 < row[arm]["e2e"]["p50_ms"] <= row[arm]["e2e"]["p99_ms"]
        expected = {"e2e", "ttft"} if row["mode"] == "stream" else {"e2e"}
        assert set(row["added"]) == expected
        for added in row["added"].values():
            assert math.isfinite(added["p50_ms"]) and math.isfinite(added["p99_ms"])
