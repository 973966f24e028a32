"""The batched engine on the real SmolLM2-135M-Instruct model, against LlamaEngine (CPU).

Agreement: on the CPU, streams decoded together give exactly LlamaEngine's output, token for
token (greedy, seeded sampling, penalties), whatever the arrival order, slot reuse, streams moved
between slots or prompt chunking; 0 mismatches over every test and randomised run so far. It
holds because each stream has a KV stream of its own (cells where a lone sequence's would be)
and every prompt token is read in a ubatch of >= 2 tokens of its stream (worker/
batched_engine.py). It can fail where the two engines' prompt caches differ and a prompt
continues tokens one of them generated (a later turn of a conversation): those cells were
computed one token at a time. With kv_unified=True, greedy texts diverge after a few tokens on
some prompts. GPU kernels are chosen by batch size, so on a GPU agreement is not expected.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest

from contract.wire import Message, SamplingParams
from worker.engine import EngineStopped, Finished, PromptTooLong, UnsupportedFormat
from worker.generation import engine_api_error
from worker.llama_engine import LlamaEngine

from .real_model import real_model_path
from .structured import ASK_PERSON, JSON_OBJECT, PERSON, UNSUPPORTED, check_person

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
pytestmark = pytest.mark.llama

from worker.batched_engine import BatchedLlamaEngine  # noqa: E402 (llama_cpp)

MODEL_PATH = real_model_path()

N_CTX = 256
QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain gravity in one sentence.",
    "Name a famous painter and one of their works.",
    "Give me a recipe for pancakes.",
)
GREEDY = SamplingParams(max_tokens=32, temperature=0.0)
SEEDED = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=42)
PENALISED = SamplingParams(max_tokens=24, temperature=0.0, presence_penalty=0.5,
                           frequency_penalty=0.7)  # fmt: skip

Output = tuple[str, Finished]


def same(output: Output) -> Output:
    """An output as the engines must agree on it: how much of the prompt either found in a
    cache (Finished.cached_tokens) depends on what each served before."""
    text, finished = output
    return text, replace(finished, cached_tokens=0)


def ask(question: str) -> list[Message]:
    return [Message("system", "You are a helpful assistant."), Message("user", question)]


async def generate(engine: Any, question: str, params: SamplingParams) -> Output:
    return await generate_for(engine, ask(question), params)


async def generate_for(engine: Any, messages: Sequence[Message], params: SamplingParams) -> Output:
    deltas: list[str] = []
    async for item in engine.stream(messages, params):
        if isinstance(item, Finished):
            return "".join(deltas), item
        if isinstance(item, str):
            deltas.append(item)
    raise AssertionError("no Finished")


@pytest.fixture(scope="module")
def reference() -> dict[tuple[str, SamplingParams], Output]:
    """LlamaEngine's output for every question and parameter set, one request at a time."""

    async def run() -> dict[tuple[str, SamplingParams], Output]:
        engine = LlamaEngine(MODEL_PATH, n_ctx=N_CTX, n_gpu_layers=0, n_threads=2)
        await engine.load()
        try:
            return {
                (q, p): await generate(engine, q, p)
                for p in (GREEDY, SEEDED, PENALISED)
                for q in (QUESTIONS if p is GREEDY else QUESTIONS[:4])
            }
        finally:
            await engine.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def batched() -> Iterator[BatchedLlamaEngine]:
    """Shared by the tests: each request posts to its own event loop. A 16-token prefill
    budget makes every prompt (~40 tokens) take several chunks."""
    engine = BatchedLlamaEngine(MODEL_PATH, n_ctx=N_CTX, n_threads=2, slots=4, prefill_chunk=16)
    asyncio.run(engine.load())
    yield engine
    asyncio.run(engine.close())


@pytest.mark.parametrize("params", [GREEDY, SEEDED, PENALISED], ids=["greedy", "seeded", "pen"])
async def test_concurrent_streams_match_the_single_sequence_engine(
    batched: BatchedLlamaEngine,
    reference: dict[tuple[str, SamplingParams], Output],
    params: SamplingParams,
) -> None:
    questions = QUESTIONS[:4]
    outputs = await asyncio.gather(*(generate(batched, q, params) for q in questions))
    for question, output in zip(questions, outputs, strict=True):
        assert same(output) == same(reference[question, params]), question


async def test_more_requests_than_slots_arriving_at_random_still_match(
    batched: BatchedLlamaEngine, reference: dict[tuple[str, SamplingParams], Output]
) -> None:
    """Six streams on four slots: a waiting line, slot reuse, busy slots moved down into
    freed ones, and prompt chunks read next to generating streams."""
    rng = random.Random(7)

    async def arrive(question: str) -> Output:
        await asyncio.sleep(rng.uniform(0, 0.6))
        return await generate(batched, question, GREEDY)

    outputs = await asyncio.gather(*(arrive(q) for q in QUESTIONS))
    for question, output in zip(QUESTIONS, outputs, strict=True):
        assert same(output) == same(reference[question, GREEDY]), question


async def test_max_tokens_and_stop_strings(batched: BatchedLlamaEngine) -> None:
    text, finished = await generate(batched, QUESTIONS[5], SamplingParams(max_tokens=5))
    assert finished.reason == "length"
    assert finished.completion_tokens == 5
    assert text

    full, _ = await generate(batched, QUESTIONS[1], GREEDY)
    stop = full.split()[3]  # a word well inside the greedy answer
    text, finished = await generate(
        batched, QUESTIONS[1], SamplingParams(max_tokens=32, temperature=0.0, stop=(stop,))
    )
    assert finished.reason == "stop"
    assert text == full[: full.index(stop)]


async def test_a_prompt_longer_than_the_context_is_refused_before_any_output(
    batched: BatchedLlamaEngine,
) -> None:
    stream = batched.stream(ask("hello " * N_CTX), GREEDY)
    with pytest.raises(PromptTooLong) as caught:
        await anext(stream)
    assert caught.value.n_ctx == N_CTX
    assert engine_api_error(caught.value).param == "messages"
    text, _ = await generate(batched, QUESTIONS[0], SamplingParams(max_tokens=3))
    assert text  # the engine is unaffected


async def test_a_consumer_that_leaves_frees_its_slot_at_once() -> None:
    """One slot: a long generation closed after one delta (or whose task is cancelled) must
    stop and hand the slot to the next request, which would otherwise wait ~500 tokens."""
    engine = BatchedLlamaEngine(MODEL_PATH, n_ctx=1024, n_threads=2, slots=1)
    await engine.load()
    try:
        long = SamplingParams(max_tokens=500, temperature=0.0)
        stream = engine.stream(ask("Tell me a very long story."), long)
        assert isinstance(await anext(stream), str)
        await stream.aclose()

        async def consume() -> None:
            async for _ in engine.stream(ask("Tell me a very long story."), long):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        started = time.monotonic()
        _, finished = await asyncio.wait_for(
            generate(engine, QUESTIONS[0], SamplingParams(max_tokens=3)), timeout=5
        )
        assert finished.completion_tokens == 3
        assert time.monotonic() - started < 3

        # Closing the engine ends a stream still in flight with a clean error.
        stream = engine.stream(ask("Tell me a very long story."), long)
        assert isinstance(await anext(stream), str)
    finally:
        await engine.close()
    with pytest.raises(EngineStopped):
        while True:
            await asyncio.wait_for(anext(stream), timeout=5)


def test_advertises_its_slots(batched: BatchedLlamaEngine) -> None:
    assert batched.slots == 4
    assert batched.n_ctx == N_CTX
    assert batched.device == "cpu"


async def test_structured_outputs_match_the_single_sequence_engine(
    batched: BatchedLlamaEngine, reference: dict[tuple[str, SamplingParams], Output]
) -> None:
    """Greedy (the argmax vetted by the grammar) and seeded constrained streams, decoded next to
    an unconstrained one, give LlamaEngine's documents; the unconstrained one is unaffected."""
    constrained = [
        SamplingParams(max_tokens=200, temperature=0.0, response_format=PERSON),
        SamplingParams(max_tokens=200, temperature=0.8, seed=3, response_format=PERSON),
        SamplingParams(max_tokens=120, temperature=0.0, response_format=JSON_OBJECT),
    ]

    async def one_at_a_time() -> list[Output]:
        engine = LlamaEngine(MODEL_PATH, n_ctx=N_CTX, n_gpu_layers=0, n_threads=2)
        await engine.load()
        try:
            return [await generate_for(engine, ASK_PERSON, p) for p in constrained]
        finally:
            await engine.close()

    expected = await one_at_a_time()
    *outputs, free = await asyncio.gather(
        *(generate_for(batched, ASK_PERSON, p) for p in constrained),
        generate(batched, QUESTIONS[0], GREEDY),
    )
    assert [same(o) for o in outputs] == [same(e) for e in expected]
    assert same(free) == same(reference[QUESTIONS[0], GREEDY])
    for text, finished in outputs[:2]:
        assert finished.reason == "stop"
        check_person(text)
    assert outputs[2][0].startswith("{")


async def test_an_unsupported_schema_is_refused_before_any_output(
    batched: BatchedLlamaEngine,
) -> None:
    with pytest.raises(UnsupportedFormat) as caught:
        await generate_for(batched, ASK_PERSON, SamplingParams(response_format=UNSUPPORTED))
    assert engine_api_error(caught.value).param == "response_format"
    text, _ = await generate(batched, QUESTIONS[0], SamplingParams(max_tokens=3))
    assert text  # the engine is unaffected
