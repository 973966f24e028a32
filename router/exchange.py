"""One relayed request on its way through the router: what the handler hands the relay.

The handler reads and checks the request once, then everything each attempt on a worker needs
travels in one `Exchange`: the body as the client sent it (relayed unchanged), the headers for the
worker and for the client, the request's pre-bound metric series, and, for requests made with a
key, the `TokenMeter` the relay leaves the response's usage in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from aiohttp import hdrs

from contract.logs import REQUEST_ID_HEADER as REQUEST_ID_HEADER
from contract.logs import Outcome
from contract.sse import FRAME_END, USAGE_TRAILER_HEADER, USAGE_TRAILER_PREFIX, trailer_usage
from contract.tracing import RequestSpan
from router.affinity import Affinity
from router.metrics import RequestSeries
from router.upstream import Api

_TRAILER_AT: Final = FRAME_END + USAGE_TRAILER_PREFIX  # a usage trailer after another frame
JSON: Final = "application/json"
# A prompt's tokens estimated from its body, for a worker that does not say (no
# contract.sse.PROMPT_TOKENS_HEADER): English runs about 4 bytes a token, and the JSON around
# the messages makes this an overestimate, never a free ride.
PROMPT_BYTES_PER_TOKEN: Final = 4


class TokenMeter:
    """A keyed request's usage, as the relay sees it go by (router.ratelimit settles it).

    Nothing is charged until a worker answers. A stream's prompt is then the worker's
    X-Prompt-Tokens header (else the body estimate), and every relayed frame counts as one
    completion token, the role frame too: the worker writes one frame per generated piece (stop
    sequence hold-back may merge pieces, never split one), so a client that read N frames is
    charged at least the N - 1 tokens they carried. The usage trailer, or a plain answer's
    `usage`, replaces both with the exact figures.
    """

    __slots__ = ("completion_tokens", "estimate", "exact", "prompt_tokens")

    def __init__(self, prompt_estimate: int = 0) -> None:
        self.estimate: Final = prompt_estimate
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.exact = False  # the worker's own usage was seen

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def answered(self, prompt_tokens: str | None) -> None:
        """A worker's stream began: its prompt (the header's value, if any) is charged."""
        if prompt_tokens is not None and prompt_tokens.isdigit():
            self.prompt_tokens = int(prompt_tokens)
        else:
            self.prompt_tokens = self.estimate

    def take_usage(self, usage: object) -> bool:
        """Take the exact figures from a parsed `usage` object (an embedding's has no
        completion_tokens); False if it is not one."""
        if not isinstance(usage, dict):
            return False
        try:
            prompt = int(usage["prompt_tokens"])
            completion = int(usage.get("completion_tokens", 0))
        except (ValueError, KeyError, TypeError):
            return False
        self.prompt_tokens, self.completion_tokens, self.exact = prompt, completion, True
        return True

    def take_trailer(self, frame: bytes) -> None:
        """Take the exact figures from a usage trailer frame (contract.sse), if it parses."""
        self.take_usage(trailer_usage(frame))


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    """What goes to a stock OpenAI server (router.upstream.Upstream.openai): no usage trailer
    header, and for a metered stream whose client did not ask for usage, the body with
    `stream_options.include_usage` set (`strip_usage`: the usage chunk is the router's, not
    the client's)."""

    body: bytes
    headers: Mapping[str, str]
    strip_usage: bool


class Exchange:
    """A request from handler to relay; set once, never changed (the OpenAI form of the
    request is derived on first use), but for what the relay reports back for the request's
    log line: `attempts`, `worker`, `first_byte_s`, `ended`."""

    __slots__ = (
        "_openai",
        "affinity",
        "api",
        "arrived",
        "attempts",
        "body",
        "ended",
        "first_byte_s",
        "meter",
        "model",
        "rate_headers",
        "request_id",
        "series",
        "tenant",
        "trace",
        "upstream_headers",
        "worker",
    )

    def __init__(
        self,
        *,
        body: bytes,
        request_id: str,
        model: str,
        series: RequestSeries,
        arrived: float,
        rate_headers: Mapping[str, str],
        meter: TokenMeter | None,
        api: Api = Api.CHAT,
        tenant: str = "",
        trace: RequestSpan | None = None,
        affinity: Affinity | None = None,
    ) -> None:
        self.api: Final = api  # which of the worker's URLs the relay posts to
        self.body: Final = body
        self.request_id: Final = request_id
        self.model: Final = model
        self.tenant: Final = tenant  # the project id (fair queueing's unit); "" when auth is off
        self.series: Final = series
        self.arrived: Final = arrived  # time.perf_counter() when the request arrived
        self.rate_headers: Final = rate_headers  # added to the client's response
        # None without a key (auth off): nothing is metered. Else the worker is asked for usage.
        self.meter: Final = meter
        # The body parsed as JSON, whatever the client's Content-Type said: say so upstream.
        headers = {hdrs.CONTENT_TYPE: JSON, REQUEST_ID_HEADER: request_id}
        if meter is not None:
            headers[USAGE_TRAILER_HEADER] = "1"
        self.upstream_headers: Final[Mapping[str, str]] = headers  # every attempt sends these
        self._openai: OpenAIRequest | None = None
        self.trace: Final = trace  # None unless tracing is on (--otlp-endpoint)
        self.affinity: Final = affinity  # what the cache-aware policy reads; else None
        self.attempts = 0  # workers tried
        self.worker = ""  # the last one tried: the one that answered, if any did
        self.first_byte_s: float | None = None  # arrival to the worker's first byte
        self.ended: Outcome | None = None  # a stream the relay ended early (cut off, error)

    def openai_request(self) -> OpenAIRequest:
        """The request as a stock OpenAI server gets it, built once, on the first attempt on
        one: our workers' requests never pay for it."""
        if self._openai is None:
            self._openai = _openai_request(self.body, self.upstream_headers, self.meter)
        return self._openai


def _openai_request(
    body: bytes, headers: Mapping[str, str], meter: TokenMeter | None
) -> OpenAIRequest:
    plain = {k: v for k, v in headers.items() if k != USAGE_TRAILER_HEADER}
    data: Any = None
    if meter is not None:  # only a metered stream needs the usage chunk
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
    if not isinstance(data, dict) or data.get("stream") is not True:
        return OpenAIRequest(body, plain, strip_usage=False)
    options = data.get("stream_options")
    options = options if isinstance(options, dict) else {}
    if options.get("include_usage") is True:
        return OpenAIRequest(body, plain, strip_usage=False)  # the client's own usage chunk
    data["stream_options"] = {**options, "include_usage": True}
    return OpenAIRequest(orjson.dumps(data), plain, strip_usage=True)


def take_openai_usage(frames: bytes, meter: TokenMeter, strip: bool) -> bytes:
    """As the relay's usage trailer reader, for a stock OpenAI server's stream: count frames as
    completion tokens until a chunk carries `usage`, which gives the exact figures; with
    `strip`, that chunk's usage (the whole chunk when it has no choices) is not relayed."""
    if meter.exact:
        return frames
    at = frames.find(_USAGE_KEY)
    while at >= 0:
        start = frames.rfind(FRAME_END, 0, at)
        start = 0 if start < 0 else start + len(FRAME_END)
        end = frames.find(FRAME_END, at) + len(FRAME_END)
        chunk = _chunk(frames[start:end])
        if chunk is not None and meter.take_usage(chunk.get("usage")):
            if not strip:
                return frames
            return frames[:start] + _without_usage(chunk) + frames[end:]
        at = frames.find(_USAGE_KEY, end)
    meter.completion_tokens += frames.count(FRAME_END)
    return frames


_USAGE_KEY: Final = b'"usage"'
DATA_PREFIX: Final = b"data: "


def _chunk(frame: bytes) -> dict[str, Any] | None:
    if not frame.startswith(DATA_PREFIX):
        return None
    try:
        chunk = orjson.loads(frame[len(DATA_PREFIX) :])
    except orjson.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None


def _without_usage(chunk: dict[str, Any]) -> bytes:
    """The usage chunk as a client that asked for none sees it: gone if it has no choices
    (the OpenAI form), else the chunk without its `usage`."""
    if not chunk.get("choices"):
        return b""
    del chunk["usage"]
    return DATA_PREFIX + orjson.dumps(chunk) + FRAME_END


UsageReader = Callable[[bytes, TokenMeter], bytes]


def usage_reader(exchange: Exchange, openai: bool) -> UsageReader:
    """How a stream's usage is read: our worker's trailer, or (`openai`: a stock server's)
    its usage chunk."""
    if exchange.meter is None or not openai:
        return take_usage
    return functools.partial(take_openai_usage, strip=exchange.openai_request().strip_usage)


def take_usage(frames: bytes, meter: TokenMeter) -> bytes:
    """Count whole frames as completion tokens until the worker's usage trailer (contract.sse)
    gives the exact usage; strip the trailer. Frames hold no raw "\\n\\n" but at their end."""
    if meter.exact:
        return frames
    start = frames.find(_TRAILER_AT)
    if start >= 0:
        start += len(FRAME_END)
    elif frames.startswith(USAGE_TRAILER_PREFIX):
        start = 0
    else:
        meter.completion_tokens += frames.count(FRAME_END)
        return frames
    end = frames.find(FRAME_END, start) + len(FRAME_END)
    meter.completion_tokens += frames.count(FRAME_END, 0, start)
    meter.take_trailer(frames[start:end])
    return frames[:start] + frames[end:]


def body_usage(body: bytes, meter: TokenMeter, prompt_tokens: str | None) -> None:
    """A plain answer's `usage`; without one, the prompt as for a stream (TokenMeter)."""
    try:
        usage = orjson.loads(body)["usage"]
    except (ValueError, KeyError, TypeError):
        usage = None
    if not meter.take_usage(usage):
        meter.answered(prompt_tokens)
