"""What the worker tells about each generation: its log line and its span.

A `Tally` exists only when one of them is on (`--log-format json` or DEBUG turns the request
logger on, contract.logs; `--otlp-endpoint` turns tracing on). Its line carries the router's
request id (the X-Request-Id header), so one search finds both sides of a request; its span
continues the router's trace from `traceparent`, with the prompt evaluation (up to the first
token) and the generation as children, per choice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Final

from aiohttp import web

from contract.errors import ApiError
from contract.logs import REQUEST_ID_HEADER, Outcome, log_request
from contract.tracing import RequestSpan
from worker import appkeys
from worker.engine import Finished

REQUEST_LOGGER: Final = "worker.requests"
REQUEST_LOG: Final = logging.getLogger(REQUEST_LOGGER)


class Tally:
    """One request's figures, as its generation goes."""

    __slots__ = (
        "arrived",
        "completion_tokens",
        "ended",
        "prompt_tokens",
        "request",
        "span",
        "ttft_s",
    )

    def __init__(self, request: web.Request, traced: bool) -> None:
        self.request: Final = request
        self.arrived: Final = time.monotonic()
        self.prompt_tokens: int | None = None
        self.completion_tokens = 0
        self.ttft_s: float | None = None
        self.ended: Outcome | None = None  # a stream that ended early (client gone, error)
        self.span: Final = (
            RequestSpan(
                f"worker {request.path}",
                {"route": request.path, "request_id": request.headers.get(REQUEST_ID_HEADER, "")},
                self.arrived,
                time.monotonic,
                headers=request.headers,
            )
            if traced
            else None
        )

    def choice(self, finished: Finished, started: float, first_at: float, done: float) -> None:
        """A choice finished: its prompt phase ran from `started` to `first_at` (its first
        output), its generation to `done` (time.monotonic() readings)."""
        if self.prompt_tokens is None:
            self.prompt_tokens = finished.prompt_tokens
            self.ttft_s = first_at - self.arrived
        self.completion_tokens += finished.completion_tokens
        if self.span is not None:
            self.span.phase("prompt", started, first_at, prompt_tokens=finished.prompt_tokens)
            self.span.phase(
                "generation", first_at, done, completion_tokens=finished.completion_tokens
            )

    def close(self, status: int) -> None:
        if status == 0:
            ended = Outcome.CANCELLED
        elif self.ended is not None:
            ended = self.ended
        else:
            ended = Outcome.ERROR if status >= 400 else Outcome.OK
        config = self.request.app[appkeys.CONFIG]
        if self.span is not None:
            self.span.end(
                status, model=config.model_id, worker=config.worker_id, outcome=ended.value
            )
        if REQUEST_LOG.isEnabledFor(logging.INFO):
            log_request(
                REQUEST_LOG,
                request_id=self.request.headers.get(REQUEST_ID_HEADER),
                route=self.request.path,
                model=config.model_id,
                worker=config.worker_id,
                status=status,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                ttft_s=None if self.ttft_s is None else round(self.ttft_s, 6),
                duration_s=round(time.monotonic() - self.arrived, 6),
                outcome=ended.value,
            )


def open_tally(request: web.Request) -> Tally | None:
    """A Tally if the log line or tracing is on, else None (nothing to pay for)."""
    traced = request.app[appkeys.CONFIG].otlp_endpoint is not None
    if traced or REQUEST_LOG.isEnabledFor(logging.INFO):
        return Tally(request, traced)
    return None


async def reported(tally: Tally, work: Awaitable[web.StreamResponse]) -> web.StreamResponse:
    """`work`'s response, the tally closed with its status however it ended (0: cancelled)."""
    status = 500
    try:
        response = await work
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        raise
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 0
        raise
    finally:
        tally.close(status)
