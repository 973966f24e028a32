"""Generation's prompt-size header: a metered stream tells the router its prompt's token count
before the first chunk, so that a stream cut short is still charged its prompt."""

from __future__ import annotations

from typing import Any

from contract import sse
from contract.wire import Message, SamplingParams
from worker.engine import Finished
from worker.fake_engine import FakeEngine

from .conftest import MODEL, StartWorker

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
USER = [{"role": "user", "content": "Say something please"}]  # 3 words + 4 = 7 prompt tokens
METERED = {sse.USAGE_TRAILER_HEADER: "1"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": USER, "max_tokens": 2, **fields}


async def test_a_metered_stream_names_its_prompt_tokens_before_the_first_chunk(
    start_worker: StartWorker,
) -> None:
    client = await start_worker()
    response = await client.post(CHAT, json=chat(stream=True), headers=METERED)
    assert response.headers[sse.PROMPT_TOKENS_HEADER] == "7"
    trailer = (await response.read()).split(sse.FRAME_END)[-3] + sse.FRAME_END
    assert sse.trailer_total_tokens(trailer) == 7 + 2  # the trailer agrees


async def test_with_n_choices_it_is_the_one_prompts_count(start_worker: StartWorker) -> None:
    client = await start_worker()
    response = await client.post(CHAT, json=chat(stream=True, n=3), headers=METERED)
    assert response.headers[sse.PROMPT_TOKENS_HEADER] == "7"
    await response.read()


async def test_text_completions_name_theirs_too(start_worker: StartWorker) -> None:
    client = await start_worker()
    body = {"model": MODEL, "prompt": "one two three", "max_tokens": 2, "stream": True}
    response = await client.post(TEXT, json=body, headers=METERED)
    assert response.headers[sse.PROMPT_TOKENS_HEADER] == "3"
    await response.read()


async def test_only_metered_streams_carry_it(start_worker: StartWorker) -> None:
    client = await start_worker()
    plain_stream = await client.post(CHAT, json=chat(stream=True))
    assert sse.PROMPT_TOKENS_HEADER not in plain_stream.headers
    await plain_stream.read()
    whole = await client.post(CHAT, json=chat(), headers=METERED)
    assert sse.PROMPT_TOKENS_HEADER not in whole.headers  # its body has the usage
    assert (await whole.json())["usage"]["prompt_tokens"] == 7


async def test_engines_report_the_prompt_before_their_first_output() -> None:
    engine = FakeEngine(ttft_ms=0, tokens_per_s=0)
    seen: list[object] = []
    messages = [Message("user", "Say something please")]
    async for item in engine.stream(messages, SamplingParams(max_tokens=1), seen.append):
        seen.append(item)
    assert seen[0] == 7
    assert isinstance(seen[-1], Finished)
    assert seen[-1].prompt_tokens == 7
