"""README's "Logs and traces": its recipe run as written against real processes (router and fake
worker with `--log-format json`, then curl and grep), and a request's trace followed from the
router's span through the attempt to the worker's span.

The recipe's ports are swapped for free ones and `python` for this interpreter; everything else is
the README's text. The trace test runs router and worker in this process (aiohttp test servers)
so both export to one in-memory exporter.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from pytest_aiohttp import AiohttpClient, AiohttpServer

from benchmarks.processes import REPO_ROOT, redis_ping, router_sees
from router.app import create_app as create_router
from router.config import RouterConfig
from tests.processes import RedisServer, free_port, http_json, wait_until
from tests.spans import memory_exporter
from worker.app import create_app as create_worker
from worker.config import WorkerConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### Logs and traces"
COLLECTOR = "http://127.0.0.1:4318/v1/traces"  # never reached: the tests' provider is in memory


def recipe(ports: dict[str, int]) -> list[str]:
    """The section's bash block, its ports replaced and `python` made this interpreter."""
    text = README.read_text().split(SECTION, 1)[1].split("\n#", 1)[0]
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert block, f"README's {SECTION!r} lacks its bash block"
    lines = []
    for line in block.group(1).strip().splitlines():
        for old, new in ports.items():
            line = line.replace(old, str(new))
        lines.append(re.sub(r"^python ", f"{sys.executable} ", line))
    return lines


@pytest.fixture
def background(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The recipe's `&` lines, each a process of its own, stopped by PID at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _shell(line: str, cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        ["bash", "-c", "exec " + line], cwd=cwd, env=env, stdout=subprocess.DEVNULL
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON log, parsed: one that does not parse fails the test."""
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_recipe_finds_one_request_in_both_logs(
    tmp_path: Path, background: list[subprocess.Popen[bytes]]
) -> None:
    redis, worker, router = free_port(), free_port(), free_port()
    lines = recipe({"6379": redis, "9001": worker, "8080": router})
    starts, (curl, grep) = lines[:-2], lines[-2:]
    for line in starts:
        assert line.endswith(" &"), line
        background.append(_shell(line[:-2], tmp_path))
        if line.startswith("redis-server"):
            wait_until(lambda: redis_ping(redis), 10, "redis")
    wait_until(lambda: router_sees(f"http://127.0.0.1:{router}", 1), 30, "the router sees it")
    answer = subprocess.run(["bash", "-c", curl], capture_output=True, timeout=30, check=True)
    assert orjson.loads(answer.stdout)["object"] == "chat.completion"
    request_id = re.search(r"X-Request-Id: ([\w-]+)", curl)
    assert request_id

    def both_logged() -> bool:
        found = subprocess.run(["bash", "-c", grep], cwd=tmp_path, capture_output=True)
        return len(found.stdout.splitlines()) == 2

    wait_until(both_logged, 10, "a request line in each log")
    router_logs, worker_logs = _lines(tmp_path / "router.log"), _lines(tmp_path / "worker.log")
    assert {"time", "level", "logger", "message"} <= router_logs[0].keys()
    (seen,) = [x for x in router_logs if x.get("request_id") == request_id.group(1)]
    (ran,) = [x for x in worker_logs if x.get("request_id") == request_id.group(1)]
    assert seen["logger"] == "router.requests" and seen["level"] == "INFO"
    assert seen["model"] == ran["model"] == "demo"
    assert seen["worker"] == ran["worker"] and seen["worker"]
    assert seen["status"] == ran["status"] == 200
    assert seen["outcome"] == ran["outcome"] == "ok"
    assert seen["route"] == "chat_completions" and seen["attempts"] == 1
    assert seen["project"] is None  # auth off: no project
    assert 0 < seen["ttft_s"] <= seen["duration_s"]
    assert ran["prompt_tokens"] > 0 and ran["completion_tokens"] > 0
    assert 0 < ran["ttft_s"] <= ran["duration_s"] <= seen["duration_s"]


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


def _child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    assert span.context is not None and parent.context is not None and span.parent is not None
    same_trace: bool = span.context.trace_id == parent.context.trace_id
    return same_trace and span.parent.span_id == parent.context.span_id


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """Set up before the test servers and so stopped after them (they deregister in it)."""
    server = RedisServer.create(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_a_request_is_one_trace_from_router_to_worker(
    redis_server: RedisServer, aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    exporter = memory_exporter()
    port = free_port()
    config = WorkerConfig(
        model_id="demo",
        redis_url=redis_server.url,
        engine="fake",
        port=port,
        fake_ttft_ms=5.0,
        otlp_endpoint=COLLECTOR,
    )
    await aiohttp_server(create_worker(config), port=port)
    router = await aiohttp_client(
        create_router(
            RouterConfig(
                redis_url=redis_server.url,
                auth=False,
                registry_refresh_s=0.2,
                otlp_endpoint=COLLECTOR,
            )
        )
    )
    url = str(router.make_url("/health"))
    await asyncio.to_thread(wait_until, lambda: http_json(url)[1]["workers"] == 1, 10, "worker")
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = await router.post(
        "/v1/chat/completions", json=body, headers={"X-Request-Id": "traced-1"}
    )
    assert response.status == 200
    await response.read()
    for _ in range(100):  # the router's span closes just after its last byte
        if any(s.name.startswith("router ") for s in exporter.get_finished_spans()):
            break
        await asyncio.sleep(0.02)
    spans = list(exporter.get_finished_spans())
    root = _one(spans, "router chat_completions")
    attempt, admission = _one(spans, "attempt"), _one(spans, "admission")
    served = _one(spans, "worker /v1/chat/completions")
    assert root.parent is None
    assert _child_of(admission, root) and _child_of(attempt, root)
    assert _child_of(served, attempt)  # across the wire, by traceparent
    assert _child_of(_one(spans, "prompt"), served)
    assert _child_of(_one(spans, "generation"), served)
    assert root.attributes is not None and served.attributes is not None
    assert root.attributes["request_id"] == served.attributes["request_id"] == "traced-1"
    assert root.attributes["model"] == "demo" and root.attributes["outcome"] == "ok"
    assert root.attributes["http.response.status_code"] == 200
    assert attempt.attributes is not None
    assert attempt.attributes["worker"] == root.attributes["worker"] == served.attributes["worker"]
