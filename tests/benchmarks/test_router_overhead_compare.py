"""The side-by-side router_overhead pieces: the floor relay passes a JSON body and an SSE stream
through byte for byte; the mock upstream answers what the proxies and worker.agent ask; the
summary over rounds subtracts direct's figure of the same round and takes medians."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from benchmarks.processes import HOST, free_port
from benchmarks.router_overhead.compare_report import render_markdown, summarise
from benchmarks.router_overhead.floor_relay import make_handler
from benchmarks.router_overhead.mock_upstream import COMPLETION, MockProtocol

BODY = b'{"id":"x","choices":[{"message":{"content":"caf\xc3\xa9 \\u00e9"}}],"n": 1}'
SSE = [b'data: {"a":1}\n\n', b'data: {"b":"\xe2\x82\xac"}\n', b"\n", b"data: [DONE]\n\n"]


async def upstream_chat(request: web.Request) -> web.StreamResponse:
    if b'"stream":true' not in await request.read():
        return web.Response(body=BODY, content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for chunk in SSE:
        await resp.write(chunk)
        await asyncio.sleep(0.01)  # separate reads on the relay's side
    await resp.write_eof()
    return resp


@pytest.fixture
async def relay(aiohttp_server: AiohttpServer) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream_chat)
    upstream = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        runner = web.ServerRunner(make_handler(session, str(upstream.make_url("/")).rstrip("/")))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, HOST, port).start()
        try:
            yield f"http://{HOST}:{port}/v1/chat/completions"
        finally:
            await runner.cleanup()


async def test_floor_relay_passes_body_and_stream_byte_exact(relay: str) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.post(relay, data=b'{"stream":false}') as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("application/json")
            assert await resp.read() == BODY
        async with client.post(relay, data=b'{"stream":true}') as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert await resp.read() == b"".join(SSE)


@pytest.fixture
async def mock() -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    port = free_port()
    server = await loop.create_server(lambda: MockProtocol(3, 0.001), HOST, port)
    try:
        yield f"http://{HOST}:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_mock_upstream_answers(mock: str) -> None:
    url = mock + "/v1/chat/completions"
    async with aiohttp.ClientSession() as client:
        for path in ("/health", "/v1/models"):
            async with client.get(mock + path) as resp:
                assert resp.status == 200, path
        async with client.get(mock + "/nothing") as resp:
            assert resp.status == 404
        async with client.post(url, data=b'{"model":"m"}') as resp:
            assert await resp.read() == COMPLETION

        async def chunked() -> AsyncIterator[bytes]:
            yield b'{"stream": true, "stream_options": '
            yield b'{"include_usage": true}}'

        async with client.post(url, data=chunked()) as resp:  # a chunked request body
            events = [line async for line in resp.content if line.startswith(b"data:")]
        assert len(events) == 1 + 3 + 1 + 1  # role, content, usage, [DONE]
        assert events[-1] == b"data: [DONE]\n" and b'"usage"' in events[-2]
        async with client.post(url, data=b'{"model":"m"}') as resp:  # same connection after
            assert await resp.read() == COMPLETION


def figures(rps: float, c1_p50: float, first: float) -> dict[str, object]:
    return {
        "rps": rps, "requests": int(rps), "wrk_errors": {}, "wrk_p99_ms": 1.0,
        "cpu_us_per_request": 1e6 / rps, "c1_p50_ms": c1_p50, "c1_p99_ms": c1_p50 * 2,
        "c1_errors": 0, "ttfb_p50_ms": first - 1, "first_chunk_p50_ms": first,
        "chunk_gap_p99_ms": 21.0, "stream_errors": 0, "rss_mib": 40.0,
    }  # fmt: skip


def one_round(direct: object, relay: object, router: object) -> dict[str, object]:
    return {"figures": {"direct": direct, "floor-relay": relay, "router": router}}


def test_summary_subtracts_direct_per_round_and_takes_medians() -> None:
    rounds = [
        one_round(figures(40_000, 0.2, 20.0), figures(8_000, 0.6, 20.5), figures(4_000, 0.9, 21.0)),
        one_round(figures(30_000, 0.3, 20.0), figures(6_000, 0.6, 20.6), figures(6_000, 0.8, 21.2)),
        one_round(figures(40_000, 0.2, 20.2), figures(7_000, 0.7, 20.8), figures(3_500, 1.0, 21.3)),
    ]
    s = summarise(rounds)
    assert s["router"]["rps"] == {"median": 4_000, "min": 3_500, "max": 6_000}
    assert s["router"]["rps_vs_floor"]["median"] == pytest.approx(0.5)
    assert s["router"]["rps_vs_floor"]["max"] == pytest.approx(1.0)
    assert s["router"]["added_c1_p50_ms"]["median"] == pytest.approx(0.7)
    assert s["floor-relay"]["added_first_chunk_ms"]["median"] == pytest.approx(0.6)
    assert s["direct"]["added_c1_p50_ms"]["median"] == 0
    assert not s["router"]["capped_by_mock"] and not s["direct"]["capped_by_mock"]
    report = {
        "summary": s, "skipped": {"nginx": "nginx is not installed"},
        "contestants": {"direct": "direct", "floor-relay": "relay", "router": "router"},
        "parameters": {"rounds": 3, "connections": 64, "duration_s": 10.0,
                       "sequential_requests": 2000, "stream_waves": 2, "streams": 16,
                       "chunks": 16, "chunk_gap_ms": 20.0},
        "machine": {"cpu_model": "cpu", "nproc": 2, "loadavg_start": [0.1], "loadavg_end": [0.2]},
        "git": {"head": "0" * 40, "dirty": False}, "date": "d", "command": "c",
        "placement": "p", "elapsed_s": 1.0,
    }  # fmt: skip
    text = render_markdown(report)
    assert "| router | 4,000 (3,500\u20136,000) | 0.50\u00d7 (0.50\u20131.00) |" in text
    assert "Left out: nginx (nginx is not installed)." in text
