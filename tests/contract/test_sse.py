"""contract.sse: frames, the end marker, the error ending and the usage trailer."""

from __future__ import annotations

import orjson
import pytest

from contract.errors import UpstreamFailed
from contract.sse import (
    DONE,
    EVENT_STREAM,
    FRAME_END,
    HEADERS,
    USAGE_TRAILER_HEADER,
    USAGE_TRAILER_PREFIX,
    error_event,
    frame,
    trailer_total_tokens,
    usage_trailer,
)


def test_frame_is_one_data_line_and_a_blank_line() -> None:
    chunk = {"id": "c1", "choices": [{"delta": {"content": "héllo\nworld"}}]}
    framed = frame(chunk)
    assert framed.startswith(b"data: ") and framed.endswith(FRAME_END)
    # Newlines inside strings are JSON-escaped, so the event cannot be cut early.
    assert framed.count(b"\n") == 2
    assert orjson.loads(framed[len(b"data: ") : -len(FRAME_END)]) == chunk


def test_done_marker_and_frame_end() -> None:
    assert DONE == b"data: [DONE]\n\n"
    assert FRAME_END == b"\n\n"


def test_error_event_is_one_error_frame_then_done() -> None:
    error = UpstreamFailed("the worker went away")
    framed = error_event(error)
    assert framed.endswith(DONE)
    first, done = framed.split(FRAME_END, 1)
    assert done == DONE
    assert first.startswith(b"data: ")
    assert orjson.loads(first[len(b"data: ") :]) == {
        "error": {
            "message": "the worker went away",
            "type": "upstream_error",
            "param": None,
            "code": "upstream_error",
        }
    }


def test_headers_say_event_stream_and_forbid_caching_and_buffering() -> None:
    assert HEADERS == {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    assert EVENT_STREAM == "text/event-stream"
    assert USAGE_TRAILER_HEADER == "X-Usage-Trailer"


def test_usage_trailer_is_an_sse_comment_that_round_trips() -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
    trailer = usage_trailer(usage)
    assert trailer.startswith(b": ")  # a comment: SSE clients ignore it
    assert trailer.startswith(USAGE_TRAILER_PREFIX) and trailer.endswith(FRAME_END)
    assert trailer.count(FRAME_END) == 1
    assert orjson.loads(trailer[len(USAGE_TRAILER_PREFIX) : -len(FRAME_END)]) == usage
    assert trailer_total_tokens(trailer) == 42


@pytest.mark.parametrize("total", [0, 1, 2**40])
def test_total_tokens_round_trip(total: int) -> None:
    assert trailer_total_tokens(usage_trailer({"total_tokens": total})) == total


def test_a_trailer_without_its_frame_end_still_reads() -> None:
    assert trailer_total_tokens(USAGE_TRAILER_PREFIX + b'{"total_tokens": 5}') == 5


@pytest.mark.parametrize(
    "trailer",
    [
        b"",
        USAGE_TRAILER_PREFIX + FRAME_END,
        USAGE_TRAILER_PREFIX + b"not json" + FRAME_END,
        USAGE_TRAILER_PREFIX + b'{"prompt_tokens": 3}' + FRAME_END,
        USAGE_TRAILER_PREFIX + b'{"total_tokens": null}' + FRAME_END,
        USAGE_TRAILER_PREFIX + b'{"total_tokens": "many"}' + FRAME_END,
        USAGE_TRAILER_PREFIX + b'{"total_tokens": [1]}' + FRAME_END,
        USAGE_TRAILER_PREFIX + b"[42]" + FRAME_END,
        USAGE_TRAILER_PREFIX + b"42" + FRAME_END,
        USAGE_TRAILER_PREFIX + b'{"total_tokens": 4' + FRAME_END,
    ],
)
def test_a_malformed_trailer_reads_as_none(trailer: bytes) -> None:
    assert trailer_total_tokens(trailer) is None
