"""router.tracing: the request's log line and span, as the relay leaves them (fake workers)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from contract.logs import Outcome
from router.exchange import Exchange
from router.metrics import CANCELLED
from router.tracing import REQUEST_LOGGER, outcome
from tests.spans import memory_exporter

from .fakes import MODEL, FakeWorker, RouterFactory, StartWorker

COLLECTOR = "http://127.0.0.1:4318/v1/traces"  # never reached: the tests' provider is in memory
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _exchange(attempts: int, ended: Outcome | None = None) -> Exchange:
    exchange = Exchange.__new__(Exchange)  # only what `outcome` reads
    exchange.attempts, exchange.ended = attempts, ended
    return exchange


@pytest.mark.parametrize(
    ("status", "exchange", "expected"),
    [
        (200, _exchange(1), Outcome.OK),
        (200, _exchange(2), Outcome.FAILED_OVER),
        (200, _exchange(2, Outcome.CUT_OFF), Outcome.CUT_OFF),
        (200, _exchange(1, Outcome.ERROR), Outcome.ERROR),
        (CANCELLED, _exchange(1), Outcome.CANCELLED),
        (CANCELLED, None, Outcome.CANCELLED),
        (429, None, Outcome.ERROR),
        (502, _exchange(3), Outcome.ERROR),
    ],
)
def test_outcome(status: int, exchange: Exchange | None, expected: Outcome) -> None:
    assert outcome(status, exchange) is expected


async def _failed_over(
    start_worker: StartWorker, start_router: RouterFactory, **config: Any
) -> tuple[str, FakeWorker]:
    """Requests until one went to the failing worker first (and so failed over)."""
    broken = await start_worker("w-broken", mode="error")
    await start_worker("w-ok")
    client = await start_router(breaker_failures=100, **config)
    for attempt in range(20):
        response = await client.post(
            "/v1/chat/completions", json=BODY, headers={"X-Request-Id": f"r{attempt}"}
        )
        assert response.status == 200
        await response.read()
        if broken.bodies:
            return f"r{attempt}", broken
    pytest.fail("the failing worker was never chosen first")


async def test_the_line_says_which_worker_answered_after_a_failover(
    start_worker: StartWorker, start_router: RouterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    request_id, _ = await _failed_over(start_worker, start_router)
    (line,) = [r for r in caplog.records if getattr(r, "request_id", None) == request_id]
    fields = line.__dict__
    assert fields["outcome"] == "failed_over"
    assert fields["worker"] == "w-ok" and fields["attempts"] == 2
    assert fields["status"] == 200 and fields["model"] == MODEL
    assert fields["prompt_tokens"] is None  # no key: nothing metered
    assert 0 < fields["ttft_s"] <= fields["duration_s"]


async def test_each_attempt_is_a_span_whose_context_reaches_its_worker(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    exporter = memory_exporter()
    request_id, broken = await _failed_over(start_worker, start_router, otlp_endpoint=COLLECTOR)
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.attributes and s.attributes.get("request_id") == request_id]
    assert root.context is not None and root.attributes is not None
    children = [s for s in spans if s.parent and s.parent.span_id == root.context.span_id]
    attempts = [s for s in children if s.name == "attempt"]
    assert [s.attributes["worker"] for s in attempts if s.attributes] == ["w-broken", "w-ok"]
    assert attempts[0].attributes and attempts[0].attributes["error.type"] == "status"
    assert len([s for s in children if s.name == "admission"]) == 2
    assert root.attributes["outcome"] == "failed_over"
    sent = broken.headers[-1]["traceparent"].split("-")
    assert attempts[0].context is not None
    assert int(sent[1], 16) == root.context.trace_id
    assert int(sent[2], 16) == attempts[0].context.span_id


async def test_no_traceparent_when_tracing_is_off(
    start_worker: StartWorker, start_router: RouterFactory
) -> None:
    worker = await start_worker("w1")
    client = await start_router()
    response = await client.post("/v1/chat/completions", json=BODY)
    await response.read()
    assert "traceparent" not in worker.headers[-1]
