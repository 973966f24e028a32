"""One relayed request on its way through the router: what the handler hands the relay.

The handler reads and checks the request once, then everything each attempt on a worker needs
travels in one `Exchange`: the body as the client sent it (relayed unchanged), the headers for the
worker and for the client, the request's pre-bound metric series, and, for keys limited by tokens
per minute, the `TokenMeter` the relay leaves the response's total tokens in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiohttp import hdrs

from contract.sse import USAGE_TRAILER_HEADER
from router.metrics import RequestSeries
from router.upstream import Api

REQUEST_ID_HEADER: Final = "X-Request-Id"
JSON: Final = "application/json"


class TokenMeter:
    """Where the relay leaves a response's total tokens, for keys limited by tokens per minute."""

    __slots__ = ("total_tokens",)

    def __init__(self) -> None:
        self.total_tokens = 0


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
        # None unless the key has a tokens-per-minute limit: then the worker is asked for usage.
        self.meter: Final = meter
        # The body parsed as JSON, whatever the client's Content-Type said: say so upstream.
        headers = {hdrs.CONTENT_TYPE: JSON, REQUEST_ID_HEADER: request_id}
        if meter is not None:
            headers[USAGE_TRAILER_HEADER] = "1"
        self.upstream_headers: Final[Mapping[str, str]] = headers  # every attempt sends these
