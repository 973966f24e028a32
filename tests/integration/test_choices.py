"""`n` > 1 through the router with the official openai SDK, on a real SmolLM2 worker of each
llama engine (tests/integration/conftest.py: auth on): plain and streamed choices, seed + i per
choice, usage summed over the choices."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.processes import MODEL_ID

pytest.importorskip("llama_cpp", reason="the real stack needs llama-cpp-python")
pytestmark = pytest.mark.llama

ASK: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a creative storyteller."},
    {"role": "user", "content": "Begin a story about a dragon."},
]


def test_n_plain_choices_differ_by_seed_and_repeat(client: openai.OpenAI) -> None:
    def ask() -> list[str]:
        completion = client.chat.completions.create(
            model=MODEL_ID, messages=ASK, max_tokens=12, temperature=1.5, seed=7, n=2
        )
        assert [choice.index for choice in completion.choices] == [0, 1]
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 24  # 12 per choice, summed
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + 24
        assert all(choice.finish_reason == "length" for choice in completion.choices)
        return [choice.message.content or "" for choice in completion.choices]

    first = ask()
    assert first[0] != first[1]  # choice 1 samples with seed 8
    assert ask() == first  # yet a seeded request repeats
    single = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=12, temperature=1.5, seed=7
    )
    assert single.choices[0].message.content == first[0]  # choice 0 samples with the seed itself


def test_n_streamed_choices_assemble_per_index(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        max_tokens=6,
        temperature=0,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts = {0: "", 1: ""}
    finishes: dict[int, str | None] = {}
    usages = []
    for chunk in stream:
        if chunk.usage is not None:
            usages.append(chunk.usage)
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                finishes[choice.index] = choice.finish_reason
    assert finishes == {0: "length", 1: "length"}
    assert texts[0] and texts[0] == texts[1]  # temperature 0: identical, as on OpenAI
    (usage,) = usages
    assert usage.completion_tokens == 12
    assert usage.total_tokens == usage.prompt_tokens + 12
    plain = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=6, temperature=0
    )
    assert plain.choices[0].message.content == texts[0]
