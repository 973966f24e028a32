"""The embedding engine: one GGUF loaded by llama-cpp-python in embedding mode (mean pooling).

A worker started with `--embedding` runs this instead of a generating engine. Every blocking
call (load, tokenise, decode) runs on the engine's one thread, never on the event loop.
Vectors are L2-normalised, as OpenAI's are. It keeps the Engine protocol (worker.engine) so the
worker's wiring (load, close, heartbeat, slots) is the same; asked to chat, it refuses
(`InvalidPrompt`): it has no generation to give.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from contract.wire import SamplingParams
from worker.engine import (
    EngineStopped,
    Failure,
    Finished,
    InvalidPrompt,
    OnPrompt,
    Prompt,
    PromptTooLong,
)

if TYPE_CHECKING:
    from llama_cpp import Llama

logger = logging.getLogger(__name__)

NOT_A_CHAT_MODEL = "This model serves embeddings only (POST /v1/embeddings); it does not chat."


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: list[list[float]]
    prompt_tokens: int


@runtime_checkable
class Embedder(Protocol):
    """An engine that turns texts into vectors (worker.text_handlers serves it)."""

    @property
    def dimensions(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> Embedded:
        """One vector per text, in order; PromptTooLong if a text does not fit the context."""
        ...


class EmbeddingEngine:
    slots: Final = 1  # one batch of inputs at a time

    def __init__(
        self, model_path: str, *, n_ctx: int, n_gpu_layers: int, n_threads: int | None
    ) -> None:
        self._model_path = model_path
        self.n_ctx = n_ctx
        self._n_gpu_layers = n_gpu_layers
        self._n_threads = n_threads
        # One thread: a llama.cpp context is not thread-safe.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._llm: Llama | None = None
        self._dimensions = 0
        self.device = "cpu"
        self._failure = Failure()  # never set: a failed embedding leaves nothing half-written

    @property
    def failure(self) -> Failure:
        return self._failure

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    async def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, llm.close)
        self._executor.shutdown(wait=False)

    async def embed(self, texts: Sequence[str]) -> Embedded:
        llm = self._llm
        if llm is None:
            raise EngineStopped()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._embed, llm, list(texts))

    async def stream(
        self, messages: Prompt, params: SamplingParams, on_prompt: OnPrompt | None = None
    ) -> AsyncIterator[str | Finished]:
        raise InvalidPrompt(NOT_A_CHAT_MODEL)
        yield  # an async generator, as the protocol's callers expect

    def _embed(self, llm: Llama, texts: list[str]) -> Embedded:
        for text in texts:  # refuse what does not fit rather than truncate it silently
            n_tokens = len(llm.tokenize(text.encode("utf-8")))
            if n_tokens > self.n_ctx:
                raise PromptTooLong(self.n_ctx, n_tokens)
        vectors, tokens = llm.embed(texts, normalize=True, truncate=False, return_count=True)
        return Embedded(vectors=vectors, prompt_tokens=tokens)

    def _load(self) -> None:
        import llama_cpp

        threads: dict[str, Any] = {}
        if self._n_threads is not None:
            threads.update(n_threads=self._n_threads, n_threads_batch=self._n_threads)
        llm = llama_cpp.Llama(
            model_path=self._model_path,
            embedding=True,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            n_ctx=self.n_ctx,
            # A sequence is embedded in one batch: the batch holds the whole context.
            n_batch=self.n_ctx,
            n_ubatch=self.n_ctx,
            n_gpu_layers=self._n_gpu_layers,
            verbose=False,
            **threads,
        )
        self.n_ctx = min(self.n_ctx, llm.n_ctx())
        if self._n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload():
            self.device = "gpu"
        self._dimensions = llm.n_embd()
        self._llm = llm
