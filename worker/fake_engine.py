"""A model-free engine with fixed timing and deterministic text, for router tests and benchmarks.

Each "token" is one word with a leading space, cycling through a fixed list. Prompt tokens are
counted as whitespace-separated words plus 4 per message (a stand-in for the chat template).
Without max_tokens the fake "reaches end of generation" after 16 tokens (finish_reason "stop"),
so requests end the way most real ones do; an explicit max_tokens ends with "length".
When tool calls are forced, the answer is one call of the first function with empty arguments
(`{}`, whatever its schema), in chunks of CALL_CHUNK characters, so router tests can see calls.
Asked for logprobs, every token has logprob TOKEN_LOGPROB, and its alternatives are itself then
the tokens that follow it, each ALTERNATIVE_STEP less likely. `logit_bias` has no effect.
Each slot keeps a prompt cache as the real engines do: the fake tokens of its last prompt and
answer. A request takes the free slot sharing the longest token prefix with its prompt (ties and
misses: the least recently used), reports the shared part as `cached_tokens` (all but the last
prompt token at most, as llama.cpp), and its slot's prefix digest joins `cached_prefixes()`.
With `prefill_tokens_per_s` the first token waits ttft_ms plus the uncached prompt tokens at that
rate, so a cache hit shows in the time to first token; 0 keeps the fixed ttft_ms.
`ignore_eos` (benchmarks) turns the natural end off: an answer runs to max_tokens.
`fail_after_tokens` (tests of a dead engine) makes the engine fail for good once it has sent that
many tokens in all, as a batched engine whose step loop died: the stream in flight ends with
EngineStopped, every later one is refused, and `failure` is set. Never the default engine.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Final

from contract.tools import ToolCallFormat
from contract.wire import SamplingParams
from worker.engine import (
    EngineStopped,
    Failure,
    Finished,
    FinishReason,
    OnPrompt,
    Output,
    Prompt,
    check_prompt,
    prompt_prefix,
)
from worker.logprobs import Logprobs, TokenLogprob
from worker.stops import StopMatcher

WORDS = ("The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog.")
TOKENS = tuple(" " + word for word in WORDS)
NATURAL_LENGTH = 16
TOKENS_PER_MESSAGE = 4
CALL_CHUNK = 8
TOKEN_LOGPROB = -0.25
ALTERNATIVE_STEP = 1.5


def fake_logprobs(tokens: tuple[str, ...], i: int, top: int) -> Logprobs:
    """The deterministic entry of token `i` of `tokens` (see the module docstring)."""

    def entry(j: int, logprob: float) -> TokenLogprob:
        text = tokens[j % len(tokens)]
        return TokenLogprob(text, logprob, text.encode())

    alternatives = tuple(entry(i + j, TOKEN_LOGPROB - j * ALTERNATIVE_STEP) for j in range(top))
    chosen = entry(i, TOKEN_LOGPROB)
    return Logprobs((TokenLogprob(chosen.token, chosen.logprob, chosen.bytes, alternatives),))


def call_tokens(fmt: ToolCallFormat) -> tuple[str, ...]:
    """A call of `fmt`'s first function with empty arguments, in CALL_CHUNK-character pieces."""
    call = f'<tool_call>\n{{"name": "{fmt.functions[0].name}", "arguments": {{}}}}\n</tool_call>'
    return tuple(call[i : i + CALL_CHUNK] for i in range(0, len(call), CALL_CHUNK))


def count_prompt_tokens(prompt: Prompt) -> int:
    """Words, plus TOKENS_PER_MESSAGE per message of a chat (a raw text prompt has no template)."""
    if isinstance(prompt, str):
        return len(prompt.split())
    return sum(len(m.content.split()) + TOKENS_PER_MESSAGE for m in prompt)


def fake_tokens(prompt: Prompt) -> tuple[str, ...]:
    """The prompt as count_prompt_tokens counts it: a chat message is its role's header, its
    words, and three closing tokens (TOKENS_PER_MESSAGE in all)."""
    if isinstance(prompt, str):
        return tuple(prompt.split())
    return tuple(
        token
        for m in prompt
        for token in (f"<|{m.role}|>", *m.content.split(), "<|end|>", "\n", "\n")
    )


def shared(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """How many leading tokens `a` and `b` share."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


class FakeSlot:
    """One slot's prompt cache: its tokens, the prefix digest they hold, when last used."""

    __slots__ = ("busy", "prefix", "prompt", "tokens", "used")

    def __init__(self) -> None:
        self.tokens: tuple[str, ...] = ()
        self.prefix: str | None = None
        self.used = 0
        self.busy = False
        self.prompt = False  # the running request's prompt is in the cache

    def evaluated(self, prompt: tuple[str, ...], prefix: str | None) -> None:
        """The running request's prompt is in the cache (its first output is out)."""
        self.tokens, self.prefix, self.prompt = prompt, prefix, True

    def release(self, answer: list[str]) -> None:
        """The request is over: the answer joins the cache after its prompt; idempotent."""
        if self.busy and self.prompt:
            self.tokens += ("<|assistant|>", *"".join(answer).split())
        self.busy = self.prompt = False


class FakeCache:
    """The slots' prompt caches (see the module docstring); on the event loop only."""

    def __init__(self, slots: int) -> None:
        self._slots = [FakeSlot() for _ in range(slots)]
        self._clock = itertools.count(1)

    def take(self, tokens: tuple[str, ...]) -> tuple[FakeSlot, int]:
        """A free slot for `tokens` and how many of them it holds (all but the last at most)."""
        free = [slot for slot in self._slots if not slot.busy]
        if not free:  # more streams than slots (a test driving the engine directly)
            return FakeSlot(), 0
        slot = max(free, key=lambda s: (shared(s.tokens, tokens), -s.used))
        cached = min(shared(slot.tokens, tokens), len(tokens) - 1)
        slot.busy, slot.used, slot.prefix, slot.prompt = True, next(self._clock), None, False
        slot.tokens = slot.tokens[:cached]
        return slot, cached

    def prefixes(self) -> tuple[str, ...]:
        held = sorted(self._slots, key=lambda s: -s.used)
        return tuple(dict.fromkeys(s.prefix for s in held if s.prefix is not None))


class FakeEngine:
    def __init__(
        self,
        *,
        ttft_ms: float,
        tokens_per_s: float,
        n_ctx: int = 4096,
        slots: int = 1,
        default_max_tokens: int | None = None,
        fail_after_tokens: int = 0,
        prefill_tokens_per_s: float = 0.0,
        ignore_eos: bool = False,
    ) -> None:
        self._ttft_s = max(0.0, ttft_ms) / 1000
        self._prefill_s = 1 / prefill_tokens_per_s if prefill_tokens_per_s > 0 else 0.0
        self._ignore_eos = ignore_eos
        self._cache = FakeCache(slots)
        self._default_max_tokens = default_max_tokens  # None: the natural length only
        self._gap_s = 1 / tokens_per_s if tokens_per_s > 0 else 0.0
        self.n_ctx: Final = n_ctx
        self.slots: Final = slots
        # Tokens left before the engine fails for good; None: never.
        self._tokens_left = fail_after_tokens if fail_after_tokens > 0 else None
        self._failure = Failure()

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def failure(self) -> Failure:
        return self._failure

    def _spend_token(self) -> None:
        """Count one token against `fail_after_tokens`; fail for good when none is left."""
        if self._tokens_left is None:
            return
        if self._tokens_left <= 0:
            self._failure.set("the fake engine failed after its configured token count")
            raise EngineStopped("The engine stopped.")
        self._tokens_left -= 1

    def cached_prefixes(self) -> tuple[str, ...]:
        return self._cache.prefixes()

    async def load(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _plan(self, params: SamplingParams, room: int) -> tuple[tuple[str, ...], int, FinishReason]:
        """The tokens to cycle through, how many to send, and the finish reason."""
        if isinstance(params.response_format, ToolCallFormat):
            tokens = call_tokens(params.response_format)
            limit = min(len(tokens), room, params.max_tokens or len(tokens))
            return tokens, limit, "stop" if limit == len(tokens) else "length"
        if params.max_tokens is not None:
            return TOKENS, min(params.max_tokens, room), "length"
        if self._ignore_eos:
            return TOKENS, min(self._default_max_tokens or room, room), "length"
        natural = min(NATURAL_LENGTH, self._default_max_tokens or NATURAL_LENGTH)
        limit = min(natural, room)
        return TOKENS, limit, "stop" if limit == NATURAL_LENGTH else "length"

    async def stream(
        self, messages: Prompt, params: SamplingParams, on_prompt: OnPrompt | None = None
    ) -> AsyncIterator[Output]:
        if self._failure.reason is not None:
            raise EngineStopped()
        prompt = fake_tokens(messages)
        check_prompt(len(prompt), self.n_ctx)
        if on_prompt is not None:
            on_prompt(len(prompt))
        slot, cached = self._cache.take(prompt)
        answer: list[str] = []
        try:
            async with aclosing(self._answer(len(prompt), cached, params, answer)) as outputs:
                async for item in outputs:
                    if not slot.prompt:
                        slot.evaluated(prompt, prompt_prefix(messages))
                    if isinstance(item, Finished):  # free before a consumer that stops here
                        slot.release(answer)
                    yield item
        finally:
            slot.release(answer)

    async def _answer(
        self,
        prompt_tokens: int,
        cached: int,
        params: SamplingParams,
        out: list[str],
    ) -> AsyncGenerator[Output, None]:
        """The answer to a prompt whose first `cached` tokens are in its slot's cache; its text
        also goes to `out`."""
        tokens, limit, final = self._plan(params, self.n_ctx - prompt_tokens)
        loop = asyncio.get_running_loop()
        # Sleep to absolute deadlines so the token rate does not drift under load.
        start = loop.time() + self._ttft_s + (prompt_tokens - cached) * self._prefill_s
        matcher = StopMatcher(params.stop)
        for i in range(limit):
            delay = start + i * self._gap_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._spend_token()
            if params.top_logprobs is not None:
                yield fake_logprobs(tokens, i, params.top_logprobs)
            text, stopped = matcher.feed(tokens[i % len(tokens)])
            out.append(text)
            if text:
                yield text
            if stopped:
                yield Finished("stop", prompt_tokens, i + 1, cached)
                return
        tail = matcher.flush()
        if tail:
            out.append(tail)
            yield tail
        yield Finished(final, prompt_tokens, limit, cached)
