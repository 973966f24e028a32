"""`n` choices through the worker app on the fake engine: shapes, usage, seeds, disconnects."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson

from contract import sse
from contract.errors import ServiceUnavailable
from contract.wire import SamplingParams
from tests.waits import eventually
from worker import appkeys
from worker.engine import EngineStopped, OnPrompt, Output, Prompt
from worker.fake_engine import FakeEngine

from .conftest import StartWorker
from .test_fake_worker import CHAT, RecordingEngine, chat


class SeedRecordingEngine(RecordingEngine):
    """Records each stream's seed and the most streams ever open at once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seeds: list[int | None] = []
        self.peak_open = 0

    async def stream(
        self, messages: Prompt, params: SamplingParams, on_prompt: OnPrompt | None = None
    ) -> AsyncIterator[Output]:
        self.seeds.append(params.seed)
        self.peak_open = max(self.peak_open, self.open_streams + 1)
        outputs = super().stream(messages, params, on_prompt)
        try:
            async for item in outputs:
                yield item
        finally:  # closes the recording stream at once, as the worker closes this one
            assert isinstance(outputs, AsyncGenerator)
            await outputs.aclose()


def frames(raw: bytes) -> list[bytes]:
    assert raw.endswith(sse.FRAME_END)
    return [frame + sse.FRAME_END for frame in raw[: -len(sse.FRAME_END)].split(sse.FRAME_END)]


def chunk_of(frame: bytes) -> Any:
    return orjson.loads(frame[len(b"data: ") : -len(sse.FRAME_END)])


async def test_n_choices_each_have_their_index_message_and_finish(
    start_worker: StartWorker,
) -> None:
    client = await start_worker()
    one = await (await client.post(CHAT, json=chat(max_tokens=4))).json()
    resp = await client.post(CHAT, json=chat(max_tokens=4, n=3, logprobs=True))
    assert resp.status == 200
    body = await resp.json()
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    for choice in body["choices"]:
        assert choice["message"]["role"] == "assistant"
        assert choice["message"]["content"] == one["choices"][0]["message"]["content"]
        assert choice["finish_reason"] == "length"
        assert len(choice["logprobs"]["content"]) == 4
    prompt = one["usage"]["prompt_tokens"]
    assert body["usage"] == {
        "prompt_tokens": prompt,  # counted once
        "completion_tokens": 12,
        "total_tokens": prompt + 12,
        # The same prompt again: the fake's slot holds all of it but its last token.
        "prompt_tokens_details": {"cached_tokens": prompt - 1},
    }


async def test_streamed_choices_end_with_one_usage_chunk_one_trailer_and_one_done(
    start_worker: StartWorker,
) -> None:
    client = await start_worker()
    fields = chat(max_tokens=3, n=3, stream=True, stream_options={"include_usage": True})
    resp = await client.post(CHAT, json=fields, headers={sse.USAGE_TRAILER_HEADER: "1"})
    assert resp.status == 200
    raw = frames(await resp.read())
    assert raw[-1] == sse.DONE
    assert raw.count(sse.DONE) == 1
    trailers = [frame for frame in raw if frame.startswith(sse.USAGE_TRAILER_PREFIX)]
    assert len(trailers) == 1
    assert raw[-2] == trailers[0]
    chunks = [chunk_of(frame) for frame in raw[:-2]]
    usage_chunks = [chunk for chunk in chunks if chunk["choices"] == []]
    assert usage_chunks == [chunks[-1]]
    usage = usage_chunks[0]["usage"]
    assert usage["completion_tokens"] == 9
    assert usage["total_tokens"] == usage["prompt_tokens"] + 9
    assert sse.trailer_total_tokens(trailers[0]) == usage["total_tokens"]
    assert len({chunk["id"] for chunk in chunks}) == 1
    by_index: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        by_index.setdefault(choice["index"], []).append(choice)
    assert sorted(by_index) == [0, 1, 2]
    texts = set()
    for choices in by_index.values():
        assert choices[0]["delta"] == {"role": "assistant", "content": ""}
        assert [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + ["length"]
        texts.add("".join(c["delta"].get("content", "") for c in choices))
    assert len(texts) == 1  # the fake ignores seeds: every choice says the same


async def test_choice_i_samples_with_seed_plus_i_one_stream_at_a_time(
    start_worker: StartWorker,
) -> None:
    engine = SeedRecordingEngine(ttft_ms=0, tokens_per_s=0)
    client = await start_worker(engine)
    assert (await client.post(CHAT, json=chat(max_tokens=2, n=3, seed=41))).status == 200
    assert (await client.post(CHAT, json=chat(max_tokens=2, n=2, stream=True))).status == 200
    assert engine.seeds == [41, 42, 43, None, None]
    assert engine.peak_open == 1  # the choices run one after another in the request's slot


async def test_client_disconnect_mid_choice_stops_it_and_frees_the_slot(
    start_worker: StartWorker,
) -> None:
    engine = SeedRecordingEngine(ttft_ms=0, tokens_per_s=100)
    client = await start_worker(engine)
    resp = await client.post(CHAT, json=chat(stream=True, n=3, max_tokens=100))
    while True:  # read until the second choice is under way
        line = await resp.content.readline()
        if line.startswith(b"data: {") and orjson.loads(line[6:])["choices"][0]["index"] == 1:
            break
    resp.close()  # the client hangs up mid-choice
    slots = client.app[appkeys.SLOTS]
    await eventually(lambda: engine.open_streams == 0 and slots.running == 0)
    assert len(engine.seeds) == 2  # the third choice never started


class SecondChoiceFails(FakeEngine):
    """Serves the first stream; every later one fails before its first output."""

    def __init__(self) -> None:
        super().__init__(ttft_ms=0, tokens_per_s=0)
        self.streams = 0

    async def stream(
        self, messages: Prompt, params: SamplingParams, on_prompt: OnPrompt | None = None
    ) -> AsyncIterator[Output]:
        self.streams += 1
        if self.streams > 1:
            raise EngineStopped("The engine stopped.")
        async for item in super().stream(messages, params, on_prompt):
            yield item


async def test_a_later_choice_that_fails_ends_the_stream_with_one_error_event(
    start_worker: StartWorker,
) -> None:
    client = await start_worker(SecondChoiceFails())
    resp = await client.post(CHAT, json=chat(stream=True, n=2, max_tokens=2))
    assert resp.status == 200  # the first choice went out already
    raw = frames(await resp.read())
    assert raw[-2:] == [
        b"data: " + ServiceUnavailable("The engine stopped.").body() + sse.FRAME_END,
        sse.DONE,
    ]
    assert {chunk_of(frame)["choices"][0]["index"] for frame in raw[:-2]} == {0}
    assert chunk_of(raw[-3])["choices"][0]["finish_reason"] == "length"
    plain = await client.post(CHAT, json=chat(n=2, max_tokens=2))
    assert plain.status == 503  # nothing was sent: a clean HTTP error
