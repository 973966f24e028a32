"""worker.embedding_engine on the real model: vectors of the model's size, unit length,
deterministic, one per input; the whole worker app serves them as OpenAI does."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from contract.embeddings import decode_base64
from contract.wire import Message, SamplingParams
from worker.app import create_app
from worker.embedding_engine import EmbeddingEngine
from worker.engine import InvalidPrompt, PromptTooLong

from .conftest import fake_config
from .real_model import real_model_path

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
pytestmark = pytest.mark.llama

MODEL_PATH = real_model_path()

N_EMBD = 576  # SmolLM2-135M's hidden size


@pytest.fixture
async def engine() -> AsyncIterator[EmbeddingEngine]:
    engine = EmbeddingEngine(MODEL_PATH, n_ctx=64, n_gpu_layers=0, n_threads=1)
    await engine.load()
    yield engine
    await engine.close()


async def test_vectors_are_unit_length_and_deterministic(engine: EmbeddingEngine) -> None:
    assert engine.dimensions == N_EMBD
    first = await engine.embed(["The cat sat on the mat.", "Stock prices fell today."])
    again = await engine.embed(["The cat sat on the mat."])
    assert [len(v) for v in first.vectors] == [N_EMBD, N_EMBD]
    assert first.prompt_tokens > again.prompt_tokens > 0
    assert (await engine.embed(["The cat sat on the mat."])).vectors == again.vectors
    assert again.vectors[0] == pytest.approx(first.vectors[0], abs=1e-6)  # batched alike
    assert math.isclose(math.fsum(x * x for x in first.vectors[0]), 1.0, rel_tol=1e-5)
    assert first.vectors[0] != first.vectors[1]


async def test_a_text_over_the_context_is_refused(engine: EmbeddingEngine) -> None:
    with pytest.raises(PromptTooLong):
        await engine.embed(["word " * 200])


async def test_it_does_not_chat(engine: EmbeddingEngine) -> None:
    with pytest.raises(InvalidPrompt):
        await anext(engine.stream([Message("user", "hi")], SamplingParams()))


async def test_the_worker_serves_them(aiohttp_client: AiohttpClient, redis_url: str) -> None:
    engine = EmbeddingEngine(MODEL_PATH, n_ctx=64, n_gpu_layers=0, n_threads=1)
    config = fake_config(redis_url, engine="llama", model_path=MODEL_PATH, embedding=True)
    client = await aiohttp_client(create_app(config, engine))
    body = {"model": "fake-model", "input": "hello", "encoding_format": "base64"}
    resp = await client.post("/v1/embeddings", data=orjson.dumps(body))
    assert resp.status == 200
    answer = orjson.loads(await resp.read())
    packed = decode_base64(answer["data"][0]["embedding"])
    plain = await engine.embed(["hello"])
    assert packed == pytest.approx(plain.vectors[0], rel=1e-6)
    assert answer["usage"]["prompt_tokens"] == plain.prompt_tokens
