"""worker.tracing: the generation's log line and its span, continuing the router's trace."""

from __future__ import annotations

import logging

import pytest

from tests.spans import memory_exporter
from worker.tracing import REQUEST_LOGGER

from .conftest import MODEL, RefusingEngine, StartWorker

COLLECTOR = "http://127.0.0.1:4318/v1/traces"  # never reached: the tests' provider is in memory
TRACE_ID, PARENT_ID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def test_the_span_continues_the_routers_trace(start_worker: StartWorker) -> None:
    exporter = memory_exporter()
    client = await start_worker(otlp_endpoint=COLLECTOR)
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Request-Id": "w-1"}
    response = await client.post("/v1/chat/completions", json=BODY, headers=headers)
    assert response.status == 200
    spans = {s.name: s for s in exporter.get_finished_spans()}
    served = spans["worker /v1/chat/completions"]
    assert served.context is not None and served.parent is not None
    assert served.context.trace_id == int(TRACE_ID, 16)
    assert served.parent.span_id == int(PARENT_ID, 16)
    for phase in ("prompt", "generation"):
        span = spans[phase]
        assert span.parent is not None and span.parent.span_id == served.context.span_id
    assert spans["prompt"].end_time == spans["generation"].start_time  # the first token
    assert served.attributes is not None
    assert served.attributes["request_id"] == "w-1"
    assert served.attributes["http.response.status_code"] == 200


async def test_without_traceparent_the_span_starts_a_trace(start_worker: StartWorker) -> None:
    exporter = memory_exporter()
    client = await start_worker(otlp_endpoint=COLLECTOR)
    response = await client.post("/v1/chat/completions", json=BODY)
    assert response.status == 200
    (served,) = [s for s in exporter.get_finished_spans() if s.name.startswith("worker ")]
    assert served.parent is None


async def test_the_line_carries_the_routers_request_id(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    client = await start_worker()
    response = await client.post("/v1/chat/completions", json=BODY, headers={"X-Request-Id": "w-2"})
    assert response.status == 200
    usage = (await response.json())["usage"]
    (line,) = [r.__dict__ for r in caplog.records if r.name == REQUEST_LOGGER]
    assert line["request_id"] == "w-2" and line["outcome"] == "ok" and line["status"] == 200
    assert line["prompt_tokens"] == usage["prompt_tokens"]
    assert line["completion_tokens"] == usage["completion_tokens"]
    assert line["model"] == MODEL and line["worker"]
    assert 0 <= line["ttft_s"] <= line["duration_s"]


async def test_an_error_mid_stream_is_logged_as_one(
    start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    client = await start_worker(RefusingEngine(RuntimeError("boom"), after_text=True))
    response = await client.post("/v1/chat/completions", json={**BODY, "stream": True})
    assert response.status == 200
    await response.read()
    (line,) = [r.__dict__ for r in caplog.records if r.name == REQUEST_LOGGER]
    assert line["outcome"] == "error" and line["status"] == 200
