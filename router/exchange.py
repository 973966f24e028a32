"""One relayed request on its way through the router: what the handler hands the relay.

The handler reads and checks the request once, then everything each attempt on a worker needs
travels in one `Exchange`: the body as the client sent it (relayed unchanged), the headers for the
worker and for the client, the request's pre-bound metric series, and, for requests made with a
key, the `TokenMeter` the relay leaves the response's usage in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import orjson
from aiohttp import hdrs

from contract.sse import USAGE_TRAILER_HEADER, USAGE_TRAILER_PREFIX
from router.metrics import RequestSeries
from router.upstream import Api

REQUEST_ID_HEADER: Final = "X-Request-Id"
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
        try:
            self.take_usage(orjson.loads(frame[len(USAGE_TRAILER_PREFIX) :]))
        except orjson.JSONDecodeError:
            return


class Exchange:
    """A request from handler to relay; set once, never changed."""

    __slots__ = (
        "api",
        "arrived",
        "body",
        "meter",
        "model",
        "rate_headers",
        "request_id",
        "series",
        "tenant",
        "upstream_headers",
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
