"""logprobs and logit_bias on both real engines (SmolLM2-135M-Instruct, CPU)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from contract.wire import Message, SamplingParams
from worker.engine import Finished, InvalidParameter
from worker.generation import engine_api_error
from worker.llama_engine import LlamaEngine
from worker.logprobs import Logprobs, TokenLogprob

from .real_model import real_model_path

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
pytestmark = pytest.mark.llama

from worker.batched_engine import BatchedLlamaEngine  # noqa: E402 (llama_cpp)

MODEL_PATH = real_model_path()

ASK = [
    Message("system", "You are a helpful assistant."),
    Message("user", "What is the capital of France?"),
]
GREEDY = SamplingParams(max_tokens=5, temperature=0.0)


def tokenize(text: bytes) -> list[int]:
    import llama_cpp

    vocab = llama_cpp.Llama(MODEL_PATH, vocab_only=True, verbose=False)
    tokens: list[int] = vocab.tokenize(text, add_bos=False, special=True)
    return tokens


@pytest.fixture(params=["llama", "batched"])
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "llama":
        engine: Any = LlamaEngine(MODEL_PATH, n_ctx=256, n_gpu_layers=0, n_threads=1)
    else:
        engine = BatchedLlamaEngine(MODEL_PATH, n_ctx=256, slots=2, n_threads=1)
    await engine.load()
    yield engine
    await engine.close()


async def run(engine: Any, params: SamplingParams) -> tuple[str, list[TokenLogprob], Finished]:
    text: list[str] = []
    entries: list[TokenLogprob] = []
    async for item in engine.stream(ASK, params):
        if isinstance(item, Finished):
            return "".join(text), entries, item
        if isinstance(item, Logprobs):
            entries.extend(item.entries)
        else:
            text.append(item)
    raise AssertionError("no Finished")


async def test_logprobs_leave_greedy_text_alone_and_pair_with_tokens(engine: Any) -> None:
    plain, none, finished = await run(engine, GREEDY)
    assert none == [] and finished.reason == "length"
    text, entries, again = await run(engine, replace(GREEDY, top_logprobs=3))
    # The same prompt again reads it from the cache: only cached_tokens may differ.
    assert text == plain and again == replace(finished, cached_tokens=again.cached_tokens)
    assert len(entries) == finished.completion_tokens
    assert b"".join(e.bytes for e in entries).decode() == text
    for entry in entries:
        assert len(entry.top) == 3
        assert entry.logprob <= 0
        # Greedy draws the most likely token, which heads the alternatives.
        assert entry.top[0].token == entry.token
        assert math.isclose(entry.top[0].logprob, entry.logprob)
        assert [t.logprob for t in entry.top] == sorted(
            (t.logprob for t in entry.top), reverse=True
        )
        assert sum(math.exp(t.logprob) for t in entry.top) <= 1 + 1e-6
    _, zero, _ = await run(engine, replace(GREEDY, top_logprobs=0))
    assert [e.top for e in zero] == [()] * len(zero)


async def test_a_bias_of_minus_100_bans_a_token(engine: Any) -> None:
    _, entries, _ = await run(engine, replace(GREEDY, max_tokens=2, top_logprobs=2))
    first, runner_up = entries[0].top
    banned = tokenize(first.bytes)
    assert len(banned) == 1
    biased = replace(GREEDY, max_tokens=2, top_logprobs=1, logit_bias=((banned[0], -100.0),))
    _, moved, _ = await run(engine, biased)
    assert moved[0].token != first.token
    assert moved[0].token == runner_up.token  # the next best, now the best
    assert moved[0].logprob > runner_up.logprob  # the banned token's mass moved away


async def test_a_bias_can_force_a_token(engine: Any) -> None:
    token = tokenize(b" banana")[0]
    _, entries, _ = await run(engine, replace(GREEDY, max_tokens=3, logit_bias=((token, 100.0),)))
    assert entries == []
    text, _, _ = await run(engine, replace(GREEDY, max_tokens=3, logit_bias=((token, 100.0),)))
    assert text.startswith(" banana")


async def test_a_token_outside_the_vocabulary_is_refused(engine: Any) -> None:
    params = replace(GREEDY, logit_bias=((10**7, 1.0),))
    with pytest.raises(InvalidParameter) as caught:
        await run(engine, params)
    error = engine_api_error(caught.value)
    assert (error.status, error.param) == (400, "logit_bias")
