"""How engine errors reach the client: the one mapping in worker.handlers, over a real app."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from contract.errors import ApiError, ContextLengthExceeded, InvalidRequest, ServiceUnavailable
from worker.engine import (
    EngineError,
    EngineStopped,
    InvalidPrompt,
    PromptTooLong,
)
from worker.generation import engine_api_error

from .conftest import MODEL, RefusingEngine, StartWorker, WorkerClient

CHAT = "/v1/chat/completions"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
CONTEXT_MESSAGE = (
    "This model's maximum context length is 16 tokens. However, your messages resulted in 20 "
    "tokens. Please reduce the length of the messages."
)


async def engine_errors(client: WorkerClient) -> float:
    text = await (await client.get("/metrics")).text()
    line = next(ln for ln in text.splitlines() if ln.startswith("worker_engine_errors_total"))
    return float(line.split()[-1])


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (PromptTooLong(16, 20), ContextLengthExceeded(CONTEXT_MESSAGE, param="messages")),
        (InvalidPrompt("bad template"), InvalidRequest("bad template", param="messages")),
        (EngineStopped(), ServiceUnavailable("The engine is not running.")),
        (EngineStopped("The engine stopped."), ServiceUnavailable("The engine stopped.")),
    ],
    ids=["too-long", "invalid", "not-running", "stopped"],
)
def test_each_engine_error_maps_to_one_api_error(error: EngineError, expected: ApiError) -> None:
    mapped = engine_api_error(error)
    assert type(mapped) is type(expected)
    assert (mapped.status, mapped.payload()) == (expected.status, expected.payload())


def test_the_mapped_errors_keep_todays_statuses_and_codes() -> None:
    too_long = engine_api_error(PromptTooLong(16, 20)).payload()["error"]
    assert too_long == {
        "message": CONTEXT_MESSAGE,
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    assert engine_api_error(InvalidPrompt("x")).status == 400
    assert engine_api_error(EngineStopped()).status == 503


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (PromptTooLong(16, 20), 400, "context_length_exceeded"),
        (InvalidPrompt("bad template"), 400, None),
        (EngineStopped(), 503, "service_unavailable"),
    ],
    ids=["too-long", "invalid", "stopped"],
)
async def test_an_engine_error_before_output_is_a_clean_http_error(
    start_worker: StartWorker, error: EngineError, status: int, code: str | None, stream: bool
) -> None:
    client = await start_worker(RefusingEngine(error))
    resp = await client.post(CHAT, json={**BODY, "stream": stream})
    assert resp.status == status
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert body == engine_api_error(error).payload()
    assert body["error"]["code"] == code
    assert await engine_errors(client) == 0  # a refusal, not an engine failure


async def test_an_engine_that_stops_mid_stream_ends_it_with_an_error_event(
    start_worker: StartWorker,
) -> None:
    client = await start_worker(
        RefusingEngine(EngineStopped("The engine stopped."), after_text=True)
    )
    resp = await client.post(CHAT, json={**BODY, "stream": True})
    assert resp.status == 200
    frames = (await resp.read()).split(b"\n\n")
    assert frames[-3:] == [
        b"data: " + ServiceUnavailable("The engine stopped.").body(),
        b"data: [DONE]",
        b"",
    ]
    assert orjson.loads(frames[1][len(b"data: ") :])["choices"][0]["delta"] == {
        "content": " partial"
    }

    resp = await client.post(CHAT, json=BODY)
    assert resp.status == 503
    assert (await resp.json())["error"]["message"] == "The engine stopped."
    assert await engine_errors(client) == 0


async def test_any_other_engine_exception_counts_as_an_engine_error(
    start_worker: StartWorker,
) -> None:
    client = await start_worker(RefusingEngine(RuntimeError("secret detail")))
    resp = await client.post(CHAT, json=BODY)
    assert resp.status == 500
    assert "secret detail" not in await resp.text()
    assert await engine_errors(client) == 1
