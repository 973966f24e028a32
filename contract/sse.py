"""Server-sent events as workers write them and the router relays them.

A streamed chat completion is a sequence of frames `data: <json>\\n\\n` ended by
`data: [DONE]\\n\\n`. A worker writes each frame in one write; the router relays whole frames only
(cut at FRAME_END), so a client never sees half of one. A stream that fails after its first byte
ends with one error frame and then [DONE] (`error_event`), as OpenAI's streams do.

The usage trailer: the router asks a worker for its usage out of band (only for keys with a
tokens-per-minute limit) by sending USAGE_TRAILER_HEADER; the worker then ends the stream with one
SSE comment frame, `: usage {"prompt_tokens": ..., "completion_tokens": ..., "total_tokens": ...}`
(the answer's usage object, so with `prompt_tokens_details` too), before [DONE]. SSE clients
ignore comments, and the router strips the frame anyway, so what the client receives stays
byte for byte what OpenAI sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from contract.errors import ApiError

EVENT_STREAM: Final = "text/event-stream"
# What every SSE response carries: no caching, and no buffering by a proxy (nginx) in between.
HEADERS: Final = {
    "Content-Type": EVENT_STREAM,
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
FRAME_END: Final = b"\n\n"
DONE: Final = b"data: [DONE]\n\n"

USAGE_TRAILER_HEADER: Final = "X-Usage-Trailer"
# On a streamed answer to a request that asked for the trailer: the prompt's token count, known
# before the first chunk, so a stream that ends without its trailer is still metered exactly.
PROMPT_TOKENS_HEADER: Final = "X-Prompt-Tokens"
USAGE_TRAILER_PREFIX: Final = b": usage "


def frame(obj: Any) -> bytes:
    """One whole SSE event."""
    return b"data: " + orjson.dumps(obj) + FRAME_END


def error_event(error: ApiError) -> bytes:
    """The frames that end a stream which failed after its first byte."""
    return b"data: " + error.body() + FRAME_END + DONE


def usage_trailer(usage: Mapping[str, Any]) -> bytes:
    """The comment frame that carries a stream's usage to the router."""
    return USAGE_TRAILER_PREFIX + orjson.dumps(usage) + FRAME_END


def trailer_usage(trailer: bytes) -> Any:
    """The usage object of one usage trailer frame (prefix and FRAME_END included); None if it
    does not parse."""
    try:
        return orjson.loads(trailer[len(USAGE_TRAILER_PREFIX) :].removesuffix(FRAME_END))
    except orjson.JSONDecodeError:
        return None


def trailer_total_tokens(trailer: bytes) -> int | None:
    """`total_tokens` of one usage trailer frame; None if bad."""
    try:
        return int(trailer_usage(trailer)["total_tokens"])
    except (ValueError, KeyError, TypeError):
        return None
