"""The seam between the HTTP worker and whatever generates tokens.

An engine turns a prompt (a chat's messages, rendered with the model's template, or for a legacy
text completion the raw prompt text) and sampling parameters into a stream of text deltas
followed by exactly one `Finished`; when the parameters ask for logprobs, each sampled token's
`Logprobs` (worker.logprobs) comes before its text. Implementations: `LlamaEngine`
(llama-cpp-python, one stream at a time), `BatchedLlamaEngine` (many streams in one context) and
`FakeEngine` (fixed timing, deterministic text; for router tests and benchmarks only).

Contract every engine keeps:
- `stream()` raises an `EngineError` (below) before yielding anything when the prompt does not
  fit the context, renders to nothing, or the engine is not running; worker.handlers alone
  turns these into HTTP errors, so engines know nothing of HTTP. EngineStopped may also end a
  stream midway, when the engine closes under it.
- Blocking work (model load, tokenisation of long prompts, decoding) never runs on the event loop.
- When the consumer stops iterating (closes the generator or its task is cancelled), generation
  stops at the next token and the engine's capacity is free again.
- At most `slots` streams generate at once; the caller (worker.slots.SlotQueue) guarantees it.
- `on_prompt`, when given, is called on the event loop with the prompt's token count before the
  stream's first output (a metered stream sends it as a header before its first chunk).
- `Finished.cached_tokens` counts the prompt tokens the engine reused from its KV cache rather
  than evaluated; `cached_prefixes()` (PrefixCache) names what that cache holds as
  contract.prefixes digests, most recent first, for the worker's registry record. A chat
  prompt arrives as a `Chat`, which carries its digest as the client's JSON names it.
- An engine that can no longer generate (its inference thread died, its context is in an
  unknown state) sets its `failure` once; from then on it refuses every stream with
  EngineStopped, and the worker leaves the registry and exits (worker.liveness).

    EngineError
    ├── PromptTooLong     the prompt's tokens do not fit the context
    ├── InvalidPrompt     the messages cannot become a prompt (template refusal, empty prompt)
    ├── UnsupportedFormat the response_format (or forced tools) ask what the grammar cannot enforce
    ├── InvalidParameter  a parameter the model cannot take (a logit_bias token outside its vocab)
    └── EngineStopped     the engine is not loaded, is closing, or its thread has stopped

Anything else an engine raises is a failure of the engine itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol, overload, runtime_checkable

from contract.wire import Message, SamplingParams
from worker.logprobs import Logprobs

FinishReason = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True, slots=True)
class Chat(Sequence[Message]):
    """A chat's messages and `prefix`: the contract.prefixes digest of all of them, hashed
    from the request's JSON (as a router hashes it; parsed Messages drop fields the hash
    keeps), None when unknown. Engines render it as any sequence of messages."""

    messages: tuple[Message, ...]
    prefix: str | None = None

    @overload
    def __getitem__(self, index: int) -> Message: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Message]: ...
    def __getitem__(self, index: int | slice) -> Message | Sequence[Message]:
        return self.messages[index]

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)


# A chat's messages, or the raw text of a legacy completion (no chat template).
Prompt = Sequence[Message] | str


def prompt_prefix(prompt: Prompt) -> str | None:
    """The digest of a chat prompt's messages, None for anything else (a text prompt)."""
    return prompt.prefix if isinstance(prompt, Chat) else None


# Told the prompt's token count before the first output (see the contract above).
OnPrompt = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # of prompt_tokens, read from a cache instead of evaluated


class EngineError(Exception):
    """A request the engine will not run; the message is fit for the client."""


class PromptTooLong(EngineError):
    def __init__(self, n_ctx: int, prompt_tokens: int) -> None:
        super().__init__(f"the prompt has {prompt_tokens} tokens; the context holds {n_ctx}")
        self.n_ctx = n_ctx
        self.prompt_tokens = prompt_tokens


class InvalidPrompt(EngineError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedFormat(EngineError):
    """`param` names the request field whose schema cannot be enforced."""

    def __init__(self, message: str, param: str = "response_format") -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidParameter(EngineError):
    """`param` names the request field the model cannot take."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class EngineStopped(EngineError):
    def __init__(self, message: str = "The engine is not running.") -> None:
        super().__init__(message)
        self.message = message


def check_prompt(prompt_tokens: int, n_ctx: int) -> None:
    """Raise unless a prompt this long leaves room in the context for one generated token."""
    if prompt_tokens >= n_ctx:
        raise PromptTooLong(n_ctx, prompt_tokens)
    if not prompt_tokens:
        raise InvalidPrompt("The messages rendered to an empty prompt.")


def check_logit_bias(params: SamplingParams, n_vocab: int) -> None:
    """Raise InvalidParameter for a biased token id outside the model's vocabulary."""
    for token, _ in params.logit_bias:
        if token >= n_vocab:
            raise InvalidParameter(
                f"Invalid key in 'logit_bias': {token} is not a token id of this model "
                f"(its vocabulary has {n_vocab} tokens).",
                "logit_bias",
            )


def with_default_length(params: SamplingParams, default_max_tokens: int | None) -> SamplingParams:
    """`params`, bounded by the worker's default answer length when the request names none."""
    if params.max_tokens is not None or default_max_tokens is None:
        return params
    return replace(params, max_tokens=default_max_tokens)


def completion_limit(n_ctx: int, prompt_tokens: int, max_tokens: int | None) -> int:
    """Most tokens a completion may have: prompt plus completion fit the context, and
    max_tokens may only shorten that."""
    room = n_ctx - prompt_tokens
    return room if max_tokens is None else min(room, max_tokens)


class Failure:
    """An engine's irrecoverable failure: set once, from any thread; awaited on the event loop."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        # A concurrent future: an inference thread may set it without the event loop.
        self._future: concurrent.futures.Future[str] = concurrent.futures.Future()

    def set(self, reason: str) -> None:
        """Record why the engine cannot go on; the first reason wins."""
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            self._future.set_result(reason)

    @property
    def reason(self) -> str | None:
        """Why the engine failed; None while it works."""
        return self._future.result() if self._future.done() else None

    async def wait(self) -> str:
        """Return the reason once the engine fails; never returns while it works."""
        # Shielded: a cancelled waiter must not cancel the future itself.
        return await asyncio.shield(asyncio.wrap_future(self._future))


# What an engine streams: text, a token's logprobs, then the one Finished.
Output = str | Logprobs | Finished
# What an engine's thread hands the event loop: an Output, or the error to raise.
Item = Output | BaseException


async def relay(out: asyncio.Queue[Item], cancel: threading.Event) -> AsyncGenerator[Output, None]:
    """An engine thread's outputs up to Finished, raising the error it sent instead. However
    the consumer leaves, `cancel` is set, so the thread stops at its next token."""
    try:
        while True:
            item = await out.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Finished):
                return
    finally:
        cancel.set()


@runtime_checkable
class PrefixCache(Protocol):
    """An engine whose KV cache outlives a request: it names the chat prefixes it holds."""

    def cached_prefixes(self) -> tuple[str, ...]:
        """contract.prefixes digests of the prompts its cache holds, most recent first; cheap
        and safe on the event loop (the heartbeat reads it on every publish)."""
        ...


class Engine(Protocol):
    @property
    def n_ctx(self) -> int: ...

    @property
    def slots(self) -> int: ...

    @property
    def device(self) -> str: ...  # "cpu" or "gpu"

    @property
    def failure(self) -> Failure: ...

    async def load(self) -> None:
        """Load the model; the worker registers only after this returns."""

    async def close(self) -> None:
        """Stop generation threads and free the model."""

    def stream(
        self, prompt: Prompt, params: SamplingParams, on_prompt: OnPrompt | None = None
    ) -> AsyncIterator[Output]:
        """Text deltas (and asked-for Logprobs) as they are produced, then one Finished."""
        ...
