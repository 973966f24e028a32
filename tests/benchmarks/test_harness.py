"""The harness end to end against a fake OpenAI server (an aiohttp app in the test).

The server streams `max_tokens` one-word chunks, reports usage when asked, answers every fifth
chat request with a 429, checks the API key, and lives under a path-based base URL. One test
runs `python -m benchmarks` as a process and checks every output file; the others drive the
runner in-process (open loop, caps, non-streamed, broken streams). No timing thresholds.
"""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import io
import math
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from benchmarks.client import Target, chat_url
from benchmarks.metrics import RunSummary, Slo, summarize
from benchmarks.processes import free_port
from benchmarks.runner import Load, Runner
from benchmarks.workload import LengthDist, SyntheticWorkload

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/proj_ABC123/my-endpoint/v1"
KEY = "xero_test_key"
MODEL = "fake-model"


class State:
    def __init__(self) -> None:
        self.chats = 0
        self.bodies: list[dict[str, Any]] = []


STATE = web.AppKey("state", State)


def event(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if request.headers.get("Authorization") != f"Bearer {KEY}":
        error = {"message": "bad key", "type": "invalid_request_error", "code": "invalid_api_key"}
        return web.json_response({"error": error}, status=401)
    body = orjson.loads(await request.read())
    state.bodies.append(body)
    mode = body.get("test_mode")
    if mode is None:
        state.chats += 1
        if state.chats % 5 == 0:
            error = {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}
            return web.json_response({"error": error}, status=429)
    prompt = sum(len(m["content"].split()) for m in body["messages"])
    tokens = body.get("max_tokens") or 3
    usage = {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}
    if not body.get("stream"):
        message = {"role": "assistant", "content": " w" * tokens}
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        return web.json_response({"choices": [choice], "usage": usage})
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))
    for i in range(tokens):
        await asyncio.sleep(0.001)
        await resp.write(event({"choices": [{"index": 0, "delta": {"content": f" w{i}"}}]}))
        if mode == "error" and i == 0:
            await resp.write(event({"error": {"message": "boom", "code": "engine_error"}}))
            break
    if mode == "cut":
        return resp  # no [DONE]
    await resp.write(event({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}))
    if body.get("stream_options", {}).get("include_usage"):
        await resp.write(event({"choices": [], "usage": usage}))
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


def make_app() -> web.Application:
    app = web.Application()
    app[STATE] = State()
    app.router.add_post(PREFIX + "/chat/completions", chat)
    app.router.add_get(PREFIX + "/models", models)
    return app


def test_chat_url() -> None:
    assert chat_url("http://h:1/v1") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_url("https://h/p/e/v1") == "https://h/p/e/v1/chat/completions"
    assert chat_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    with pytest.raises(ValueError):
        chat_url("h:1/v1")


async def test_cli_end_to_end_writes_every_file(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    app = make_app()
    server = await aiohttp_server(app)
    base = str(server.make_url(PREFIX))
    argv = [
        sys.executable, "-m", "benchmarks",
        "--base-url", base, "--api-key", KEY,  # no --model: discovered from GET /models
        "--concurrency", "1,3", "--num-requests", "10", "--warmup-requests", "2",
        "--input-len", "uniform:3,6", "--output-len", "4", "--seed", "1",
        "--slo", "ttft_ms=60000", "--slo", "tpot_ms=60000",
        "--out", str(tmp_path), "--name", "run", "--no-progress", "--smoke",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()

    summary = orjson.loads((tmp_path / "run.json").read_bytes())
    meta = summary["metadata"]
    assert meta["smoke"] is True and "--api-key" in meta["command"]
    assert meta["machine"]["nproc"] >= 1 and meta["date"] and meta["git"]["head"]
    assert summary["config"]["target"]["model"] == MODEL
    assert summary["config"]["target"]["api_key"] == "set"  # never the key itself
    assert KEY not in (tmp_path / "run.json").read_text().replace(meta["command"], "")
    runs = summary["runs"]
    assert [r["concurrency"] for r in runs] == [1, 3]
    for r in runs:
        assert r["num_requests"] == 10
        assert r["completed"] + r["failed"] == 10
        assert r["failed"] == sum(r["errors"].values())
        assert set(r["errors"]) <= {"http_429:rate_limit_exceeded"} and r["failed"] >= 1
        assert r["usage_reported"] == r["completed"]
        assert r["total_output_tokens"] == 4 * r["completed"]
        assert r["good_requests"] == r["completed"]
        for key in ("mean", "median", "p50", "p90", "p95", "p99", "max"):
            for metric in ("ttft", "tpot", "itl", "e2el"):
                assert math.isfinite(r[f"{key}_{metric}_ms"]), f"{key}_{metric}_ms"
        assert r["p50_ttft_ms"] <= r["p50_e2el_ms"]
    # Every chat body asked for usage and named the discovered model.
    bodies = app[STATE].bodies
    assert all(
        b["model"] == MODEL and b["stream_options"] == {"include_usage": True} for b in bodies
    )
    assert len(bodies) == 2 * (10 + 2)  # warm-up included, by the server's count

    check_requests_and_tables(tmp_path)
    assert b"concurrency 3" in out


def check_requests_and_tables(tmp_path: Path) -> None:
    """run.requests.jsonl, run.csv and the plots of test_cli_end_to_end_writes_every_file."""
    lines = (tmp_path / "run.requests.jsonl").read_bytes().splitlines()
    records = [orjson.loads(line) for line in lines]
    assert len(records) == 20
    assert {r["level"] for r in records} == {0, 1}
    ok = [r for r in records if r["ok"]]
    assert all(len(r["itl_ms"]) == 3 and r["output_tokens"] == 4 for r in ok)
    assert all(3 <= r["prompt_words"] <= 6 and r["input_tokens"] == r["prompt_words"] for r in ok)

    rows = list(csv.DictReader(io.StringIO((tmp_path / "run.csv").read_text())))
    assert [row["concurrency"] for row in rows] == ["1", "3"]
    assert "p99_ttft_ms" in rows[0] and "request_throughput" in rows[0]
    assert rows[0]["errors"].startswith("http_429:rate_limit_exceeded=")

    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("run.latency.png", "run.throughput.png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def workload(output_tokens: int = 3) -> SyntheticWorkload:
    return SyntheticWorkload(LengthDist("fixed", 4), LengthDist("fixed", output_tokens), seed=0)


async def test_open_loop_arrivals_and_cap(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(make_app())
    target = Target((str(server.make_url(PREFIX)),), MODEL, api_key=KEY)
    async with Runner(target, workload(), progress=False) as runner:
        capped = await runner.run(Load(request_rate=math.inf, num_requests=8, max_concurrency=2))
        poisson = await runner.run(Load(request_rate=500.0, duration_s=0.05, seed=3))
    assert [r.index for r in capped.records] == list(range(8))
    assert all(r.scheduled_s == 0.0 for r in capped.records)
    figures = summarize(capped.records, RunSummary(capped.duration_s))
    assert figures["max_concurrent_requests"] <= 2
    assert figures["max_send_lag_ms"] >= 0
    assert len(poisson.records) >= 1
    scheduled = [r.scheduled_s or 0.0 for r in poisson.records]
    assert scheduled == sorted(scheduled) and all(s < 0.05 for s in scheduled)
    summary = poisson.summary(Slo(), (50, 99))
    assert summary["request_rate"] == 500.0 and summary["burstiness"] == 1.0


async def test_plain_requests_and_broken_streams(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(make_app())
    base = str(server.make_url(PREFIX))
    plain = Target((base,), MODEL, api_key=KEY, stream=False)
    broken = Target((base,), MODEL, api_key=KEY, extra_body=(("test_mode", "error"),))
    cut = Target((base,), MODEL, api_key=KEY, extra_body=(("test_mode", "cut"),))
    no_key = Target((base,), MODEL)
    nowhere = Target((f"http://127.0.0.1:{free_port()}/v1",), MODEL)
    load = Load(concurrency=1, num_requests=3)
    results = {}
    for name, target in [
        ("plain", plain),
        ("broken", broken),
        ("cut", cut),
        ("no_key", no_key),
        ("nowhere", nowhere),
    ]:
        async with Runner(target, workload(5), progress=False) as runner:
            results[name] = (await runner.run(load)).records
    for r in results["plain"]:
        assert r.ok and r.ttft_s is None and r.itl_s == ()
        assert r.output_tokens == 5 and r.usage_reported
    errors = {name: {r.error for r in recs} for name, recs in results.items() if name != "plain"}
    assert errors["broken"] == {"sse_error:engine_error"}
    assert errors["cut"] == {"no_done"}
    assert errors["no_key"] == {"http_401:invalid_api_key"}
    (nowhere_error,) = errors["nowhere"]
    assert nowhere_error is not None and nowhere_error.startswith("Client")
    assert all(r.status == 0 and r.ttfb_s is None for r in results["nowhere"])
