"""The chat-completion objects: the JSON body, the SSE chunks, the usage chunk and trailer."""

from __future__ import annotations

from typing import Any

import orjson

from contract import sse
from worker.completions import ChunkWriter, chat_choice, completion, new_completion_id, usage
from worker.engine import Finished

DONE = Finished("stop", prompt_tokens=7, completion_tokens=3)
USAGE = {
    "prompt_tokens": 7,
    "completion_tokens": 3,
    "total_tokens": 10,
    "prompt_tokens_details": {"cached_tokens": 0},
}


def frames(raw: bytes) -> list[bytes]:
    """Whole SSE frames, each with its FRAME_END; asserts nothing is left over."""
    parts = raw.split(sse.FRAME_END)
    assert parts[-1] == b""
    return [part + sse.FRAME_END for part in parts[:-1]]


def data(frame: bytes) -> Any:
    assert frame.startswith(b"data: ")
    return orjson.loads(frame[len(b"data: ") : -len(sse.FRAME_END)])


def test_completion_ids_look_like_openais_and_differ() -> None:
    ids = {new_completion_id() for _ in range(100)}
    assert len(ids) == 100
    for completion_id in ids:
        assert completion_id.startswith("chatcmpl-")
        assert len(completion_id) == len("chatcmpl-") + 30


def test_usage_adds_up() -> None:
    assert usage(DONE) == USAGE


def test_usage_counts_the_prompt_once_and_sums_the_choices() -> None:
    second = Finished("length", prompt_tokens=7, completion_tokens=5, cached_tokens=6)
    assert usage(DONE, second) == {
        "prompt_tokens": 7,
        "completion_tokens": 8,
        "total_tokens": 15,
        # The first choice's: a later one reuses its prompt by construction.
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_usage_reports_the_cached_prompt_tokens_as_openai_does() -> None:
    from openai.types import CompletionUsage

    hit = usage(Finished("stop", prompt_tokens=7, completion_tokens=3, cached_tokens=5))
    assert list(hit) == [
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "prompt_tokens_details",
    ]
    details = CompletionUsage.model_validate(hit).prompt_tokens_details
    assert details is not None and details.cached_tokens == 5


def test_json_completion_has_openais_keys_in_openais_order() -> None:
    done = Finished("length", 7, 3)
    body = completion("chatcmpl-x", "m", [chat_choice(0, "Hello there", done)], usage(done))
    assert list(body) == [
        "id", "object", "created", "model", "choices", "usage", "system_fingerprint",
    ]  # fmt: skip
    assert body["object"] == "chat.completion"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there", "refusal": None},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert body["usage"] == USAGE


def test_chunks_share_id_created_and_model() -> None:
    writer = ChunkWriter("chatcmpl-x", "m", include_usage=False)
    chunks = [data(writer.role()), data(writer.content("Hi")), data(writer.finish("stop"))]
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-x", chunks[0]["created"], "m", "chat.completion.chunk")
    }
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "Hi"}
    assert chunks[2]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop",
    }  # fmt: skip
    assert all("usage" not in c for c in chunks)


def test_each_choice_carries_its_index_in_the_same_completion() -> None:
    writer = ChunkWriter("chatcmpl-x", "m", include_usage=False)
    second = writer.choice(1)
    first_chunk, second_chunk = data(writer.content("a")), data(second.content("b"))
    assert (first_chunk["choices"][0]["index"], second_chunk["choices"][0]["index"]) == (0, 1)
    assert first_chunk["id"] == second_chunk["id"] == "chatcmpl-x"
    assert first_chunk["created"] == second_chunk["created"]


def test_finish_is_one_chunk_and_without_usage_the_end_is_done() -> None:
    writer = ChunkWriter("chatcmpl-x", "m", include_usage=False)
    assert len(frames(writer.finish("stop"))) == 1
    assert writer.end(USAGE) == sse.DONE


def test_include_usage_adds_null_usage_to_chunks_and_a_usage_chunk_before_done() -> None:
    writer = ChunkWriter("chatcmpl-x", "m", include_usage=True)
    assert data(writer.content("Hi"))["usage"] is None
    finish = data(writer.finish("stop"))
    usage_chunk, done = frames(writer.end(USAGE))
    assert finish["usage"] is None
    assert data(usage_chunk)["choices"] == []
    assert data(usage_chunk)["usage"] == USAGE
    assert data(usage_chunk)["id"] == "chatcmpl-x"
    assert done == sse.DONE


def test_usage_trailer_is_a_comment_frame_just_before_done() -> None:
    writer = ChunkWriter("chatcmpl-x", "m", include_usage=False, usage_trailer=True)
    trailer, done = frames(writer.end(USAGE))
    assert trailer.startswith(sse.USAGE_TRAILER_PREFIX)
    assert sse.trailer_total_tokens(trailer) == 10
    assert done == sse.DONE
