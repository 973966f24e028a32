"""A model-free engine with fixed timing and deterministic text, for router tests and benchmarks.

Each "token" is one word with a leading space, cycling through a fixed list. Prompt tokens are
counted as whitespace-separated words plus 4 per message (a stand-in for the chat template).
Without max_tokens the fake "reaches end of generation" after 16 tokens (finish_reason "stop"),
so requests end the way most real ones do; an explicit max_tokens ends with "length".
When tool calls are forced, the answer is one call of the first function with empty arguments
(`{}`, whatever its schema), in chunks of CALL_CHUNK characters, so router tests can see calls.
Asked for logprobs, every token has logprob TOKEN_LOGPROB, and its alternatives are itself then
the tokens that follow it, each ALTERNATIVE_STEP less likely. `logit_bias` has no effect.
`fail_after_tokens` (tests of a dead engine) makes the engine fail for good once it has sent that
many tokens in all, as a batched engine whose step loop died: the stream in flight ends with
EngineStopped, every later one is refused, and `failure` is set. Never the default engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
    ) -> None:
        self._ttft_s = max(0.0, ttft_ms) / 1000
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
        natural = min(NATURAL_LENGTH, self._default_max_tokens or NATURAL_LENGTH)
        limit = min(natural, room)
        return TOKENS, limit, "stop" if limit == NATURAL_LENGTH else "length"

    async def stream(
        self, messages: Prompt, params: SamplingParams, on_prompt: OnPrompt | None = None
    ) -> AsyncIterator[Output]:
        if self._failure.reason is not None:
            raise EngineStopped()
        prompt_tokens = count_prompt_tokens(messages)
        check_prompt(prompt_tokens, self.n_ctx)
        if on_prompt is not None:
            on_prompt(prompt_tokens)
        tokens, limit, final = self._plan(params, self.n_ctx - prompt_tokens)
        loop = asyncio.get_running_loop()
        # Sleep to absolute deadlines so the token rate does not drift under load.
        start = loop.time() + self._ttft_s
        matcher = StopMatcher(params.stop)
        for i in range(limit):
            delay = start + i * self._gap_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._spend_token()
            if params.top_logprobs is not None:
                yield fake_logprobs(tokens, i, params.top_logprobs)
            text, stopped = matcher.feed(tokens[i % len(tokens)])
            if text:
                yield text
            if stopped:
                yield Finished("stop", prompt_tokens, i + 1)
                return
        tail = matcher.flush()
        if tail:
            yield tail
        yield Finished(final, prompt_tokens, limit)
