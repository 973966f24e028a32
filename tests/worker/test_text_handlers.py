"""worker.text_handlers: /v1/completions on a generating engine and /v1/embeddings on an
embedding engine (fake ones here; the real ones in test_embedding_engine.py and the integration
tests), and the 404s of workers that do not serve an endpoint."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest

from contract.embeddings import decode_base64
from worker.config import ConfigError, load_config
from worker.embedding_engine import Embedded
from worker.engine import EngineStopped, PromptTooLong
from worker.fake_engine import FakeEngine

from .conftest import MODEL, StartWorker, WorkerClient

DIMENSIONS = 4


class FakeEmbedder(FakeEngine):
    """Vectors from each text's length; refuses texts longer than 10 characters."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__(ttft_ms=0, tokens_per_s=0)
        self.error = error

    @property
    def dimensions(self) -> int:
        return DIMENSIONS

    async def embed(self, texts: Sequence[str]) -> Embedded:
        if self.error is not None:
            raise self.error
        for text in texts:
            if len(text) > 10:
                raise PromptTooLong(10, len(text))
        vectors = [[float(len(t)), 0.5, -1.0, 0.0] for t in texts]
        return Embedded(vectors=vectors, prompt_tokens=sum(len(t) for t in texts))


async def post(client: WorkerClient, path: str, **body: object) -> tuple[int, dict[str, object]]:
    resp = await client.post(path, data=orjson.dumps({"model": MODEL, **body}))
    return resp.status, orjson.loads(await resp.read())


def error(answer: dict[str, object]) -> dict[str, object]:
    found = answer["error"]
    assert isinstance(found, dict)
    return found


async def test_embeddings_float_and_base64(start_worker: StartWorker) -> None:
    client = await start_worker(FakeEmbedder())
    status, body = await post(client, "/v1/embeddings", input=["ab", "abcd"])
    assert status == 200
    assert body == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [2.0, 0.5, -1.0, 0.0]},
            {"object": "embedding", "index": 1, "embedding": [4.0, 0.5, -1.0, 0.0]},
        ],
        "model": MODEL,
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
    status, body = await post(client, "/v1/embeddings", input="ab", encoding_format="base64")
    data = body["data"]
    assert status == 200 and isinstance(data, list)
    assert decode_base64(data[0]["embedding"]) == [2.0, 0.5, -1.0, 0.0]


async def test_embedding_refusals(start_worker: StartWorker) -> None:
    client = await start_worker(FakeEmbedder())
    status, body = await post(client, "/v1/embeddings", input="a", dimensions=3)
    assert (status, error(body)["param"]) == (400, "dimensions")
    assert (await post(client, "/v1/embeddings", input="a", dimensions=DIMENSIONS))[0] == 200
    status, body = await post(client, "/v1/embeddings", input=["a", "far too long a text"])
    assert (status, error(body)["code"], error(body)["param"]) == (
        400,
        "context_length_exceeded",
        "input",
    )
    resp = await client.post("/v1/embeddings", data=orjson.dumps({"model": "x", "input": "a"}))
    assert resp.status == 404
    assert error(orjson.loads(await resp.read()))["code"] == "model_not_found"


async def test_a_stopped_embedder_is_503(start_worker: StartWorker) -> None:
    client = await start_worker(FakeEmbedder(EngineStopped()))
    status, body = await post(client, "/v1/embeddings", input="a")
    assert (status, error(body)["code"]) == (503, "service_unavailable")


async def test_a_chat_worker_does_not_embed(start_worker: StartWorker) -> None:
    client = await start_worker()
    status, body = await post(client, "/v1/embeddings", input="a")
    assert status == 404
    assert (error(body)["code"], error(body)["param"]) == ("model_not_found", "model")
    assert "does not serve embeddings" in str(error(body)["message"])


async def test_a_text_completion_runs_the_raw_prompt(start_worker: StartWorker) -> None:
    client = await start_worker()
    status, body = await post(client, "/v1/completions", prompt="once upon a time", max_tokens=3)
    assert status == 200
    assert str(body["id"]).startswith("cmpl-") and body["object"] == "text_completion"
    assert body["choices"] == [
        {"text": " The quick brown", "index": 0, "logprobs": None, "finish_reason": "length"}
    ]
    # The fake counts a raw prompt's words, with no per-message template overhead.
    assert body["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 3,
        "total_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def test_a_streamed_text_completion_ends_with_usage_and_done(
    start_worker: StartWorker,
) -> None:
    client = await start_worker()
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "stream": True}
    resp = await client.post(
        "/v1/completions", data=orjson.dumps(body | {"stream_options": {"include_usage": True}})
    )
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n\n") if line.startswith(b"data: {")]
    texts = [e["choices"][0]["text"] for e in events if e["choices"]]
    assert texts == [" The", " quick", ""]
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 3
    assert all(e["object"] == "text_completion" for e in events)


async def test_text_completions_are_validated(start_worker: StartWorker) -> None:
    client = await start_worker()
    status, body = await post(client, "/v1/completions", prompt="a", echo=True)
    assert (status, error(body)["param"]) == (400, "echo")
    status, body = await post(client, "/v1/completions", prompt="")
    assert (status, error(body)["param"]) == (400, "prompt")


async def test_an_embedding_worker_does_not_complete_text(start_worker: StartWorker) -> None:
    client = await start_worker(FakeEmbedder())
    status, body = await post(client, "/v1/completions", prompt="a")
    assert (status, error(body)["code"]) == (404, "model_not_found")
    assert "does not serve text completions" in str(error(body)["message"])


def test_embedding_needs_the_llama_engine() -> None:
    base = ["--model-id", "e", "--redis-url", "redis://127.0.0.1:1/0"]
    assert not load_config([*base, "--engine", "fake"], {}).embedding
    with pytest.raises(ConfigError, match="llama engine"):
        load_config([*base, "--engine", "fake", "--embedding", "on"], {})
