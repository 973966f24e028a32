"""logprobs, top_logprobs and logit_bias through the router with the official openai SDK, on a
real SmolLM2 worker of each llama engine (tests/integration/conftest.py: auth on): plain and
streamed logprobs shapes, a token banned with -100, and bad requests refused naming `param`."""

from __future__ import annotations

import math

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.processes import MODEL_ID, MODEL_PATH

pytest.importorskip("llama_cpp", reason="the real stack needs llama-cpp-python")
pytestmark = pytest.mark.llama

ASK: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_logprobs_pair_with_every_completion_token(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "length" and completion.usage is not None
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert len(content) == completion.usage.completion_tokens == 5
    assert "".join(e.token for e in content) == choice.message.content
    for entry in content:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy draws the best
    plain = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=5, temperature=0
    )
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == choice.message.content


def test_streamed_chunks_carry_their_tokens_logprobs(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, tokens, used = "", [], 0
    for chunk in stream:
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
        if not chunk.choices or not chunk.choices[0].delta.content:
            continue
        logprobs = chunk.choices[0].logprobs
        assert logprobs is not None and logprobs.content
        text += chunk.choices[0].delta.content
        tokens += logprobs.content
    assert used == len(tokens) == 6
    assert "".join(t.token for t in tokens) == text
    assert all(len(t.top_logprobs) == 2 for t in tokens)


def test_a_bias_of_minus_100_bans_the_greedy_token(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=1, temperature=0, logprobs=True, top_logprobs=2
    )
    assert first.choices[0].logprobs is not None and first.choices[0].logprobs.content
    best, runner_up = first.choices[0].logprobs.content[0].top_logprobs
    import llama_cpp

    from worker.config import resolve_model_path

    vocab = llama_cpp.Llama(resolve_model_path(MODEL_PATH), vocab_only=True, verbose=False)
    (token,) = vocab.tokenize(best.token.encode(), add_bos=False, special=True)
    banned = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        max_tokens=1,
        temperature=0,
        logprobs=True,
        logit_bias={str(token): -100},
    )
    assert banned.choices[0].message.content == runner_up.token
    assert banned.choices[0].logprobs is not None and banned.choices[0].logprobs.content
    assert math.exp(banned.choices[0].logprobs.content[0].logprob) > math.exp(runner_up.logprob)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"1": 101}}, "logit_bias"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),  # outside the vocabulary
    ],
)
def test_bad_requests_are_400s_naming_the_param(
    client: openai.OpenAI, fields: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_ID, messages=ASK, max_tokens=2, extra_body=fields
        )
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body.get("param") == param
