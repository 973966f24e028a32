"""What the router tells about each relayed request: its log line and its span.

Both are built only when asked for: the line when the request logger is on (`--log-format json`,
or DEBUG: contract.logs), the span when `--otlp-endpoint` is set. The span opens as the request
arrives; the relay adds the admission wait and worker choice, then one child span per attempt,
whose context goes to the worker as `traceparent` (router.proxy). Both close in the handler's
`finally`, with what the relay left on the Exchange.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from contract.logs import Outcome, log_request
from contract.tracing import RequestSpan
from router.access import Scope
from router.appkeys import REQUEST_ID
from router.exchange import Exchange
from router.metrics import CANCELLED, Route

REQUEST_LOGGER: Final = "router.requests"
REQUEST_LOG: Final = logging.getLogger(REQUEST_LOGGER)


def request_span(request: web.Request, route: Route, arrived: float) -> RequestSpan:
    """The request's span, opened as of `arrived` (time.perf_counter())."""
    attributes = {"route": route.value, "request_id": request[REQUEST_ID]}
    return RequestSpan(f"router {route.value}", attributes, arrived, time.perf_counter)


@dataclass(frozen=True, slots=True)
class Report:
    """What the handler knows of a finished request."""

    request: web.Request
    route: Route
    scope: Scope  # the key's project and endpoint (router.access.OPEN: none)
    model: str  # "" when the body did not parse
    status: int  # router.metrics.CANCELLED when the client hung up
    duration_s: float


def outcome(status: int, exchange: Exchange | None) -> Outcome:
    if status == CANCELLED:
        return Outcome.CANCELLED
    if exchange is not None and exchange.ended is not None:
        return exchange.ended
    if status >= 400:
        return Outcome.ERROR
    if exchange is not None and exchange.attempts > 1:
        return Outcome.FAILED_OVER
    return Outcome.OK


def report(done: Report, exchange: Exchange | None, span: RequestSpan | None) -> None:
    """Close the span and write the log line, whichever is on."""
    ended = outcome(done.status, exchange)
    worker = exchange.worker if exchange is not None else ""
    project = done.scope.project_id or ""
    endpoint = done.scope.endpoint.name if done.scope.endpoint else ""
    if span is not None:
        span.end(
            done.status,
            model=done.model,
            project=project,
            endpoint=endpoint,
            worker=worker,
            attempts=exchange.attempts if exchange is not None else 0,
            outcome=ended.value,
        )
    if not REQUEST_LOG.isEnabledFor(logging.INFO):
        return
    meter = exchange.meter if exchange is not None else None
    ttft = exchange.first_byte_s if exchange is not None else None
    log_request(
        REQUEST_LOG,
        request_id=done.request[REQUEST_ID],
        project=project or None,
        endpoint=endpoint or None,
        route=done.route.value,
        model=done.model,
        worker=worker or None,
        attempts=exchange.attempts if exchange is not None else 0,
        status=done.status,
        prompt_tokens=meter.prompt_tokens if meter is not None else None,
        completion_tokens=meter.completion_tokens if meter is not None else None,
        ttft_s=None if ttft is None else round(ttft, 6),
        duration_s=round(done.duration_s, 6),
        outcome=ended.value,
    )
