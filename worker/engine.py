"""The seam between the HTTP worker and whatever generates tokens.

An engine turns a chat (messages + sampling parameters) into a stream of text deltas followed
by exactly one `Finished`. Implementations: `LlamaEngine` (llama-cpp-python, the real one) and
`FakeEngine` (fixed timing, deterministic text; for router tests and benchmarks only).

Contract every engine keeps:
- `stream()` raises `contract.errors.ContextLengthExceeded` before yielding anything when the
  prompt does not fit the context.
- Blocking work (model load, tokenisation of long prompts, decoding) never runs on the event loop.
- When the consumer stops iterating (closes the generator or its task is cancelled), generation
  stops at the next token and the engine's capacity is free again.
- At most `slots` streams generate at once; the caller (the worker's admission) guarantees it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from contract.errors import ContextLengthExceeded
from contract.wire import ChatRequest, Message

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int | None = None  # None: until end of generation or the context is full
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @classmethod
    def from_request(cls, request: ChatRequest) -> SamplingParams:
        return cls(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop,
            seed=request.seed,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
        )


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


def context_exceeded(n_ctx: int, prompt_tokens: int) -> ContextLengthExceeded:
    return ContextLengthExceeded(
        f"This model's maximum context length is {n_ctx} tokens. However, your messages "
        f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
        param="messages",
    )


class Engine(Protocol):
    @property
    def n_ctx(self) -> int: ...

    @property
    def slots(self) -> int: ...

    @property
    def device(self) -> str: ...  # "cpu" or "gpu"

    async def load(self) -> None:
        """Load the model; the worker registers only after this returns."""

    async def close(self) -> None:
        """Stop generation threads and free the model."""

    def stream(
        self, messages: Sequence[Message], params: SamplingParams
    ) -> AsyncIterator[str | Finished]:
        """Text deltas as they are produced, then one Finished."""
        ...
