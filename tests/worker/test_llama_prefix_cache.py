"""The llama engine reuses its context's prompt prefix and says so (real SmolLM2, CPU)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from contract.wire import Message, SamplingParams
from worker.engine import Chat, Finished, Prompt
from worker.llama_engine import LlamaEngine

from .real_model import real_model_path

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
pytestmark = pytest.mark.llama

MODEL_PATH = real_model_path()
SYSTEM = Message("system", "You are a helpful assistant. Answer in one short sentence.")
FIRST = (SYSTEM, Message("user", "What is the capital of France?"))


@pytest.fixture
async def engine() -> AsyncIterator[LlamaEngine]:
    engine = LlamaEngine(MODEL_PATH, n_ctx=512, n_gpu_layers=0, n_threads=1)
    await engine.load()
    yield engine
    await engine.close()


async def answer(engine: LlamaEngine, prompt: Prompt, **params: object) -> tuple[str, Finished]:
    text: list[str] = []
    async for item in engine.stream(prompt, SamplingParams(**params)):  # type: ignore[arg-type]
        if isinstance(item, Finished):
            return "".join(text), item
        if isinstance(item, str):
            text.append(item)
    raise AssertionError("no Finished")


async def test_a_later_turn_reuses_the_earlier_turns_tokens(engine: LlamaEngine) -> None:
    assert engine.cached_prefixes() == ()
    reply, first = await answer(engine, Chat(FIRST, "a" * 16), temperature=0, max_tokens=8)
    assert first.cached_tokens == 0
    assert engine.cached_prefixes() == ("a" * 16,)
    later = (*FIRST, Message("assistant", reply), Message("user", "And of Italy?"))
    _, second = await answer(engine, Chat(later, "b" * 16), temperature=0, max_tokens=4)
    # Every token of the first prompt but its generation prompt's tail is reused.
    assert first.prompt_tokens - 5 <= second.cached_tokens < second.prompt_tokens
    assert engine.cached_prefixes() == ("b" * 16,)


async def test_reuse_does_not_change_a_greedy_answer(engine: LlamaEngine) -> None:
    fresh, done = await answer(engine, list(FIRST), temperature=0, max_tokens=8)
    again, repeat = await answer(engine, list(FIRST), temperature=0, max_tokens=8)
    assert repeat.cached_tokens == repeat.prompt_tokens - 1
    assert again == fresh
    # A text prompt names no prefix; a seeded request evaluates from scratch.
    assert engine.cached_prefixes() == ()
    _, seeded = await answer(engine, list(FIRST), temperature=0, max_tokens=2, seed=1)
    assert seeded.cached_tokens == 0 and done.cached_tokens == 0


async def test_ignore_eos_runs_to_max_tokens() -> None:
    engine = LlamaEngine(MODEL_PATH, n_ctx=512, n_gpu_layers=0, n_threads=1, ignore_eos=True)
    await engine.load()
    try:
        # Greedy "Paris." then end of turn, within a dozen tokens; ignore_eos runs on.
        _, done = await answer(engine, list(FIRST), temperature=0, max_tokens=40)
    finally:
        await engine.close()
    assert (done.reason, done.completion_tokens) == ("length", 40)
