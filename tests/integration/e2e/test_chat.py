"""The official openai SDK against the real stack: two SmolLM2 workers behind one router."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.e2e.conftest import Stack
from tests.processes import MODEL_ID, http_json, wait_until

pytestmark = pytest.mark.llama

# SmolLM2's template adds its own system prompt when none is given, and with it greedy decoding
# wanders off ("L'Étoile, ..."); with a plain system message it answers the question.
FRANCE: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="anything", max_retries=0, timeout=60)


def test_plain_chat_answers(stack: Stack) -> None:
    with client(stack) as c:
        resp = c.chat.completions.create(model=MODEL_ID, messages=FRANCE, temperature=0)
    assert resp.object == "chat.completion"
    assert resp.id.startswith("chatcmpl-")
    assert resp.model == MODEL_ID
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert resp.usage is not None
    assert resp.usage.prompt_tokens > 5
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_stream_with_usage_matches_plain(stack: Stack) -> None:
    with client(stack) as c:
        plain = c.chat.completions.create(model=MODEL_ID, messages=FRANCE, temperature=0)
        chunks = list(
            c.chat.completions.create(
                model=MODEL_ID,
                messages=FRANCE,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert len({ch.id for ch in chunks}) == 1
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "stop"
    assert all(f is None for f in finishes[:-1])
    # Exactly one usage chunk, last, with no choices; the others carry usage null.
    assert chunks[-1].choices == []
    usage, same = chunks[-1].usage, plain.usage
    assert usage is not None and same is not None
    # The same counts; the stream ran second, so its prompt may come from the worker's cache.
    assert usage.model_dump(exclude={"prompt_tokens_details"}) == same.model_dump(
        exclude={"prompt_tokens_details"}
    )
    assert usage.prompt_tokens_details is not None and same.prompt_tokens_details is not None
    assert all(ch.usage is None for ch in chunks[:-1])
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content


def test_stop_sequence_cuts_output(stack: Stack) -> None:
    with client(stack) as c:
        full = c.chat.completions.create(model=MODEL_ID, messages=FRANCE, temperature=0)
        text = full.choices[0].message.content or ""
        assert "Paris" in text
        cut = c.chat.completions.create(
            model=MODEL_ID, messages=FRANCE, temperature=0, stop=["Paris", "zzz"]
        )
    assert cut.choices[0].message.content == text[: text.index("Paris")]
    assert cut.choices[0].finish_reason == "stop"


def test_max_tokens_gives_length(stack: Stack) -> None:
    with client(stack) as c:
        resp = c.chat.completions.create(
            model=MODEL_ID, messages=FRANCE, temperature=0, max_tokens=3
        )
        streamed = list(
            c.chat.completions.create(
                model=MODEL_ID,
                messages=FRANCE,
                temperature=0,
                max_completion_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    assert [ch.choices[0].finish_reason for ch in streamed if ch.choices][-1] == "length"
    assert streamed[-1].usage is not None and streamed[-1].usage.completion_tokens == 3


def test_models_list_and_retrieve(stack: Stack) -> None:
    with client(stack) as c:
        models = c.models.list()
        one = c.models.retrieve(MODEL_ID)
        with pytest.raises(openai.NotFoundError) as err:
            c.models.retrieve("no-such-model")
    assert [m.id for m in models.data] == [MODEL_ID]
    assert models.data[0].object == "model"
    assert one.id == MODEL_ID and one.owned_by and one.created > 0
    assert err.value.code == "model_not_found"


def test_unknown_model_is_404(stack: Stack) -> None:
    with client(stack) as c, pytest.raises(openai.NotFoundError) as err:
        c.chat.completions.create(model="gpt-17", messages=FRANCE)
    assert err.value.code == "model_not_found"
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "model"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    ],
)
def test_validation_errors(stack: Stack, kwargs: dict[str, object], param: str) -> None:
    args: dict[str, object] = {"model": MODEL_ID, "messages": FRANCE, **kwargs}
    with client(stack) as c, pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(**args)  # type: ignore[call-overload]
    body = err.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"
    assert body["param"] == param


def test_context_length_exceeded(stack: Stack) -> None:
    long = "word " * 4000
    with client(stack) as c, pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": long}])
    assert err.value.code == "context_length_exceeded"


def test_request_id_on_every_response(stack: Stack) -> None:
    with client(stack) as c:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL_ID, messages=FRANCE, max_tokens=2
        )
        assert raw.headers.get("x-request-id")
        with pytest.raises(openai.NotFoundError) as err:
            c.chat.completions.create(model="nope", messages=FRANCE)
    assert err.value.response.headers.get("x-request-id")


async def _load(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/health") as resp:
        body = await resp.json()
        return int(body["running"]) + int(body["waiting"])


async def test_two_workers_share_eight_streams(stack: Stack) -> None:
    async def one_stream(c: openai.AsyncOpenAI) -> str:
        stream = await c.chat.completions.create(
            model=MODEL_ID, messages=FRANCE, temperature=0, max_tokens=24, stream=True
        )
        return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])

    seen = {w.name: 0 for w in stack.workers}
    async with (
        openai.AsyncOpenAI(base_url=stack.base_url, api_key="x", max_retries=0, timeout=120) as c,
        aiohttp.ClientSession() as session,
    ):
        streams = [asyncio.create_task(one_stream(c)) for _ in range(8)]
        while not all(s.done() for s in streams):
            for w in stack.workers:
                seen[w.name] = max(seen[w.name], await _load(session, w.url))
            await asyncio.sleep(0.05)
        texts = await asyncio.gather(*streams)
    assert all(texts), texts
    assert all(n > 0 for n in seen.values()), f"max load per worker: {seen}"
    # The router admits no more than a worker's slots (1 for the llama engine) and queues the
    # rest itself, so no worker ever has a request waiting behind another.
    assert all(n <= 1 for n in seen.values()), seen


def test_disconnect_mid_stream_frees_worker(stack: Stack) -> None:
    with client(stack) as c:
        stream = c.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "user", "content": "Write a very long story about a dragon."}],
            max_tokens=1000,
            stream=True,
        )
        for _, _chunk in zip(range(5), stream, strict=False):
            pass
        assert sum(http_json(w.url + "/health")[1]["running"] for w in stack.workers) == 1
        stream.close()
    wait_until(
        lambda: all(
            http_json(w.url + "/health")[1]["running"] + http_json(w.url + "/health")[1]["waiting"]
            == 0
            for w in stack.workers
        ),
        1.0,
        "the worker to stop generating after the client left",
        interval_s=0.02,
    )
