"""The fake engine: deterministic words, fixed timing, exact usage, the engine contract."""

from __future__ import annotations

import time

import pytest

from contract.wire import Message, SamplingParams
from worker.engine import Finished, PromptTooLong
from worker.fake_engine import NATURAL_LENGTH, WORDS, FakeEngine, count_prompt_tokens

HELLO = [Message("user", "Say something please")]  # 3 words + 4 = 7 prompt tokens


async def run(engine: FakeEngine, params: SamplingParams) -> tuple[str, Finished]:
    parts: list[str] = []
    async for item in engine.stream(HELLO, params):
        if isinstance(item, Finished):
            return "".join(parts), item
        if isinstance(item, str):
            parts.append(item)
    raise AssertionError("no Finished")


def fake(*, n_ctx: int = 4096, slots: int = 1, default_max_tokens: int | None = None) -> FakeEngine:
    return FakeEngine(
        ttft_ms=0,
        tokens_per_s=0,
        n_ctx=n_ctx,
        slots=slots,
        default_max_tokens=default_max_tokens,
    )


def test_prompt_tokens_are_words_plus_four_per_message() -> None:
    assert count_prompt_tokens(HELLO) == 7
    assert count_prompt_tokens([*HELLO, Message("assistant", "ok")]) == 7 + 5


async def test_without_max_tokens_it_stops_naturally() -> None:
    text, finished = await run(fake(), SamplingParams())
    assert finished == Finished("stop", 7, NATURAL_LENGTH)
    assert text.split() == [WORDS[i % len(WORDS)] for i in range(NATURAL_LENGTH)]


async def test_the_workers_default_length_bounds_only_requests_that_name_none() -> None:
    short = fake(default_max_tokens=5)
    assert (await run(short, SamplingParams()))[1] == Finished("length", 7, 5)
    # The same prompt again: its slot holds all of it but the last token.
    assert (await run(short, SamplingParams(max_tokens=9)))[1] == Finished("length", 7, 9, 6)
    long = fake(default_max_tokens=512)  # the natural end comes first
    assert (await run(long, SamplingParams()))[1] == Finished("stop", 7, NATURAL_LENGTH)


async def test_max_tokens_and_a_small_context_end_with_length() -> None:
    assert (await run(fake(), SamplingParams(max_tokens=3)))[1] == Finished("length", 7, 3)
    # n_ctx 10 leaves 3 tokens after the 7 of the prompt.
    assert (await run(fake(n_ctx=10), SamplingParams()))[1] == Finished("length", 7, 3)


async def test_a_stop_string_cuts_the_text_and_is_never_sent() -> None:
    text, finished = await run(fake(), SamplingParams(stop=("fox",)))
    assert text == " The quick brown "
    assert finished.reason == "stop"
    assert finished.completion_tokens == 4


async def test_a_prompt_that_does_not_fit_is_refused_before_any_output() -> None:
    stream = fake(n_ctx=7).stream(HELLO, SamplingParams())
    with pytest.raises(PromptTooLong) as caught:
        await anext(stream)
    assert (caught.value.n_ctx, caught.value.prompt_tokens) == (7, 7)


async def test_timing_follows_ttft_and_token_rate() -> None:
    engine = FakeEngine(ttft_ms=50, tokens_per_s=100)
    started = time.monotonic()
    _, finished = await run(engine, SamplingParams(max_tokens=6))
    elapsed = time.monotonic() - started
    assert finished.completion_tokens == 6
    assert 0.05 + 5 * 0.01 <= elapsed < 1.0


def test_advertises_its_shape() -> None:
    engine = fake(n_ctx=512, slots=3)
    assert (engine.n_ctx, engine.slots, engine.device) == (512, 3, "cpu")
