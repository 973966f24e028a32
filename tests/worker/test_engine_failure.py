"""The real engines on SmolLM2 (CPU): they report the prompt's size before the first output,
and fail for good, refusing every later stream, when the batched step loop dies or a llama
generation breaks off (worker.liveness then takes the worker down)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from contract.wire import Message, SamplingParams
from worker.engine import EngineStopped, Failure, Finished, Item
from worker.llama_engine import ChatPrompt, LlamaEngine, Run

from .real_model import real_model_path

llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python")
pytestmark = pytest.mark.llama

from worker.batched_engine import BatchedLlamaEngine  # noqa: E402 (llama_cpp)
from worker.step_loop import Request  # noqa: E402 (llama_cpp)

MODEL_PATH = real_model_path()

N_CTX = 512
ASK = [Message("system", "You are a helpful assistant."), Message("user", "Name a colour.")]
SHORT = SamplingParams(max_tokens=2, temperature=0.0)
LONG = SamplingParams(max_tokens=400, temperature=0.0)


async def outputs_with_prompt(engine: Any) -> list[object]:
    """What a stream hands out, the prompt size it reported first."""
    seen: list[object] = []
    async for item in engine.stream(ASK, SHORT, seen.append):
        seen.append(item)
    return seen


@pytest.mark.parametrize("kind", ["llama", "batched"])
async def test_the_prompt_size_comes_before_the_first_output(kind: str) -> None:
    engine: Any
    if kind == "llama":
        engine = LlamaEngine(MODEL_PATH, n_ctx=N_CTX, n_gpu_layers=0, n_threads=1)
    else:
        engine = BatchedLlamaEngine(MODEL_PATH, n_ctx=N_CTX, n_threads=1, slots=2)
    await engine.load()
    try:
        seen = await outputs_with_prompt(engine)
        finished = seen[-1]
        assert isinstance(finished, Finished)
        assert seen[0] == finished.prompt_tokens > 10
        assert all(not isinstance(item, int) for item in seen[1:])
    finally:
        await engine.close()


async def test_a_dead_step_loop_fails_the_batched_engine_for_good() -> None:
    engine = BatchedLlamaEngine(MODEL_PATH, n_ctx=N_CTX, n_threads=1, slots=2)
    await engine.load()
    try:
        running = engine.stream(ASK, LONG)
        assert isinstance(await anext(running), str)
        assert engine.failure.reason is None
        # An internal bug: a prompt token the batch cannot hold makes the step loop raise.
        loop = asyncio.get_running_loop()
        poison = Request([1, 2, "not a token"], SHORT, loop, asyncio.Queue())  # type: ignore[list-item]
        engine._steps.submit(poison)  # type: ignore[union-attr]
        reason = await asyncio.wait_for(engine.failure.wait(), 10)
        assert "step loop" in reason
        with pytest.raises(EngineStopped):  # the stream in flight ends cleanly
            async for _ in running:
                pass
        with pytest.raises(EngineStopped):  # and nothing runs any more
            await anext(engine.stream(ASK, SHORT))
    finally:
        await engine.close()


class BrokenDecode(ChatPrompt):
    """llama.cpp failing mid-decode, as `Llama.generate` raises it."""

    def _tokens(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("llama_decode returned -3")


def test_a_generation_that_breaks_off_fails_the_llama_engine_for_good() -> None:
    llm = llama_cpp.Llama(model_path=MODEL_PATH, n_ctx=N_CTX, verbose=False)
    try:
        chat = BrokenDecode(llm, N_CTX)
        items: list[Item] = []
        sizes: list[int] = []
        failure = Failure()
        run = Run(items.append, threading.Event(), failure, sizes.append)
        chat.run(ASK, SHORT, run)
        assert sizes == [len(chat.prompt_tokens(ASK))]
        assert len(items) == 1
        assert isinstance(items[0], EngineStopped)
        assert failure.reason is not None
        assert "llama_decode returned -3" in failure.reason
        # A request queued behind it is refused, its prompt not even read.
        chat.run(ASK, SHORT, run)
        assert isinstance(items[1], EngineStopped)
        assert len(sizes) == 1
    finally:
        llm.close()


async def test_a_failed_llama_engine_refuses_every_stream() -> None:
    engine = LlamaEngine(MODEL_PATH, n_ctx=N_CTX, n_gpu_layers=0, n_threads=1)
    await engine.load()
    try:
        assert isinstance((await outputs_with_prompt(engine))[-1], Finished)
        engine.failure.set("generation failed: llama_decode returned -3")
        with pytest.raises(EngineStopped):
            await anext(engine.stream(ASK, SHORT))
    finally:
        await engine.close()
