"""Relaying a chat completion to a worker and its answer back to the client.

Fail over only before the first response byte: a refused, reset or timed-out connection, or a
worker's 503 (it is full), sends the request to another candidate, up to `max_attempts`
distinct workers. Once the worker has answered, the answer is the client's: a plain response is
returned with its status and body bytes as they are; a stream is relayed chunk by chunk as it
arrives, cut at the last complete SSE frame ("\\n\\n") so that if the worker dies mid-stream the
client still gets whole frames, then one error event and `data: [DONE]`.

A client that hangs up cancels the handler; the upstream response is then closed (not released
to the pool), which drops the worker connection and makes the worker stop generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Final

import orjson
from aiohttp import (
    ClientConnectionError,
    ClientPayloadError,
    ClientResponse,
    ClientSession,
    ClientTimeout,
    ConnectionTimeoutError,
    SocketTimeoutError,
    TCPConnector,
    hdrs,
    web,
)
from multidict import CIMultiDict

from router.balancer import Policy
from router.errors import ServiceUnavailable, UpstreamFailed, UpstreamTimeout, sse_error_event
from router.metrics import ChatSeries, RouterMetrics
from router.snapshot import Upstream
from router.wire import USAGE_TRAILER_HEADER, USAGE_TRAILER_PREFIX

logger = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp sets itself on the way out.
_DROPPED_HEADERS: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "date",
        "server",
    }
)
EVENT_STREAM: Final = "text/event-stream"
FRAME_END: Final = b"\n\n"
BUSY_RETRY_AFTER_S: Final = 1.0


class _Miss(enum.Enum):
    """Why an attempt ended before the first byte, leaving the request free to go elsewhere."""

    BUSY = "busy"  # the worker answered 503: full
    UNREACHABLE = "unreachable"  # no connection, or it dropped before any answer


def create_session(connect_timeout_s: float, read_timeout_s: float) -> ClientSession:
    """The one keep-alive session every relay shares."""
    connector = TCPConnector(
        limit=0,  # concurrency is bounded by the workers' admission, not by a client pool
        keepalive_timeout=10.0,  # shorter than any server's, so we close idle sockets first
        ttl_dns_cache=60,
    )
    return ClientSession(
        connector=connector,
        timeout=ClientTimeout(
            total=None,
            connect=connect_timeout_s,
            sock_connect=connect_timeout_s,
            sock_read=read_timeout_s,  # the longest silence allowed between two chunks
        ),
        # Bytes go through untouched: ask for no compression and decode none.
        skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT_ENCODING),
        auto_decompress=False,
        trust_env=False,
    )


class TokenMeter:
    """Where the relay leaves a response's total tokens, for keys limited by tokens per minute."""

    __slots__ = ("total_tokens",)

    def __init__(self) -> None:
        self.total_tokens = 0


def _take_usage(frames: bytes, meter: TokenMeter) -> bytes:
    """Strip the worker's usage trailer (router.wire) from whole frames, noting its total."""
    start = frames.find(FRAME_END + USAGE_TRAILER_PREFIX)
    if start >= 0:
        start += len(FRAME_END)
    elif frames.startswith(USAGE_TRAILER_PREFIX):
        start = 0
    else:
        return frames
    end = frames.find(FRAME_END, start) + len(FRAME_END)
    with contextlib.suppress(ValueError, KeyError, TypeError):
        usage = orjson.loads(frames[start + len(USAGE_TRAILER_PREFIX) : end - len(FRAME_END)])
        meter.total_tokens = int(usage["total_tokens"])
    return frames[:start] + frames[end:]


def _body_usage(body: bytes, meter: TokenMeter) -> None:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        meter.total_tokens = int(orjson.loads(body)["usage"]["total_tokens"])


class Relay:
    def __init__(
        self, session: ClientSession, policy: Policy, metrics: RouterMetrics, max_attempts: int
    ) -> None:
        self._session = session
        self._policy = policy
        self._metrics = metrics
        self._max_attempts = max_attempts

    async def forward(
        self,
        request: web.Request,
        body: bytes,
        content_type: str,
        request_id: str,
        candidates: Sequence[Upstream],
        series: ChatSeries,
        arrived: float,
        response_headers: Mapping[str, str] | None = None,
        meter: TokenMeter | None = None,
    ) -> web.StreamResponse:
        """Send `body` to the least-loaded candidate, failing over before the first byte.

        `response_headers` are added to the client's response (rate-limit headers); a `meter`
        asks the worker for its usage and receives the response's total tokens.
        """
        headers = {hdrs.CONTENT_TYPE: content_type, "X-Request-Id": request_id}
        if meter is not None:
            headers[USAGE_TRAILER_HEADER] = "1"
        extra = response_headers or {}
        tried: list[str] = []
        busy = False
        for _ in range(self._max_attempts):
            upstream = self._policy.choose(candidates, tried)
            if upstream is None:
                break
            if tried:
                series.retries.inc()
            tried.append(upstream.worker_id)
            upstream.begin()
            try:
                if len(tried) == 1:
                    self._metrics.overhead.observe(time.perf_counter() - arrived)
                response = await self._open(upstream, body, headers)
                if isinstance(response, _Miss):
                    busy = busy or response is _Miss.BUSY
                    continue
                return await self._relay(
                    request, upstream, response, request_id, series, arrived, extra, meter
                )
            finally:
                upstream.end()
        if busy:
            raise ServiceUnavailable(
                "Every worker for this model is at capacity; retry shortly.",
                retry_after_s=BUSY_RETRY_AFTER_S,
            )
        raise UpstreamFailed("No worker for this model could be reached.")

    async def _open(
        self, upstream: Upstream, body: bytes, headers: dict[str, str]
    ) -> ClientResponse | _Miss:
        """The worker's response (headers read), or why there is none."""
        try:
            response = await self._session.post(upstream.chat_url, data=body, headers=headers)
        except SocketTimeoutError:
            # Connected and sent, then silence: the worker may be generating, so no retry.
            self._metrics.upstream_errors.labels(upstream.worker_id, "timeout").inc()
            raise UpstreamTimeout("The worker did not answer in time.") from None
        except asyncio.CancelledError:
            self._metrics.cancellations.labels("waiting").inc()
            raise
        except (ClientConnectionError, ConnectionTimeoutError) as exc:
            # Logged once per heartbeat at most: refused() keeps it out of the way until then.
            logger.warning("worker %s unreachable (%r); trying another", upstream.worker_id, exc)
            self._metrics.upstream_errors.labels(upstream.worker_id, "connect").inc()
            upstream.refused()
            return _Miss.UNREACHABLE
        if response.status == 503:
            response.release()
            self._metrics.upstream_errors.labels(upstream.worker_id, "busy").inc()
            upstream.refused()
            return _Miss.BUSY
        return response

    async def _relay(
        self,
        request: web.Request,
        upstream: Upstream,
        response: ClientResponse,
        request_id: str,
        series: ChatSeries,
        arrived: float,
        extra: Mapping[str, str],
        meter: TokenMeter | None,
    ) -> web.StreamResponse:
        try:
            if response.content_type == EVENT_STREAM:
                out = await self._relay_stream(
                    request, upstream, response, request_id, series, arrived, extra, meter
                )
            else:
                out = await self._relay_body(upstream, response, series, arrived, extra, meter)
        except BaseException:
            # Not release(): the worker must see its connection drop and stop generating.
            response.close()
            raise
        response.release()
        return out

    async def _relay_body(
        self,
        upstream: Upstream,
        response: ClientResponse,
        series: ChatSeries,
        arrived: float,
        extra: Mapping[str, str],
        meter: TokenMeter | None,
    ) -> web.Response:
        series.first_byte.observe(time.perf_counter() - arrived)  # headers: the answer is ready
        try:
            body = await response.read()
        except asyncio.CancelledError:
            self._metrics.cancellations.labels("waiting").inc()
            raise
        except TimeoutError:
            self._metrics.upstream_errors.labels(upstream.worker_id, "timeout").inc()
            raise UpstreamTimeout("The worker did not finish in time.") from None
        except (ClientPayloadError, ClientConnectionError):
            self._metrics.upstream_errors.labels(upstream.worker_id, "broken").inc()
            raise UpstreamFailed("The worker failed while answering.") from None
        headers = CIMultiDict(
            (k, v) for k, v in response.headers.items() if k.lower() not in _DROPPED_HEADERS
        )
        headers.update(extra)
        if meter is not None and response.status == 200:
            _body_usage(body, meter)
        return web.Response(body=body, status=response.status, headers=headers)

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: Upstream,
        response: ClientResponse,
        request_id: str,
        series: ChatSeries,
        arrived: float,
        extra: Mapping[str, str],
        meter: TokenMeter | None,
    ) -> web.StreamResponse:
        out = web.StreamResponse(
            status=response.status,
            headers={
                hdrs.CONTENT_TYPE: EVENT_STREAM,
                hdrs.CACHE_CONTROL: "no-cache",
                "X-Accel-Buffering": "no",
                "X-Request-Id": request_id,
                **extra,
            },
        )
        try:
            await out.prepare(request)
            tail = await self._pump(upstream, response, out, series, arrived, meter)
            if tail:
                await out.write(tail)
            await out.write_eof()
        except asyncio.CancelledError:
            self._metrics.cancellations.labels("streaming").inc()
            raise
        except ConnectionResetError:
            # The client left before aiohttp noticed and cancelled us: same outcome, and the
            # prepared response goes back to aiohttp, which knows the connection is gone.
            self._metrics.cancellations.labels("streaming").inc()
            response.close()
        return out

    async def _pump(
        self,
        upstream: Upstream,
        response: ClientResponse,
        out: web.StreamResponse,
        series: ChatSeries,
        arrived: float,
        meter: TokenMeter | None,
    ) -> bytes:
        """Relay whole frames as they arrive; return what is left to write at the end."""
        pending = b""
        last = 0.0
        gap = series.chunk_gap
        try:
            async for chunk in response.content.iter_any():
                now = time.perf_counter()
                if last:
                    gap.observe(now - last)
                else:
                    series.first_byte.observe(now - arrived)
                last = now
                data = pending + chunk if pending else chunk
                end = data.rfind(FRAME_END) + 2
                if end == 1:  # no frame boundary yet
                    pending = data
                    continue
                # The common case is whole frames only: no copy.
                frames, pending = (data, b"") if end == len(data) else (data[:end], data[end:])
                if meter is not None:
                    frames = _take_usage(frames, meter)
                await out.write(frames)
        except ConnectionResetError:
            raise  # the client's side, handled by the caller
        except TimeoutError:
            self._metrics.upstream_errors.labels(upstream.worker_id, "timeout").inc()
            logger.warning("worker %s went silent mid-stream", upstream.worker_id)
            return sse_error_event(UpstreamTimeout("The worker stopped sending in time."))
        except (ClientPayloadError, ClientConnectionError):
            self._metrics.upstream_errors.labels(upstream.worker_id, "broken").inc()
            logger.warning("worker %s failed mid-stream", upstream.worker_id)
            return sse_error_event(UpstreamFailed("The worker failed mid-stream."))
        return pending  # a clean end: relay the worker's last bytes as they are
