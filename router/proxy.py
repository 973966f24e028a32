"""Relaying a request (chat, text completion, embeddings) to a worker and its answer back.

One request, in phases, each with its own bound and its own way to fail cleanly:

    queued        router.admission: no worker has room; bounded wait, else 503 + Retry-After
    connecting    refused, reset, or no connection within connect_timeout_s: try another worker
    first byte    request sent, waiting for the answer (a stream: its first chunk; otherwise the
                  whole body, at most max_response_bytes, else 502): a 5xx, or the connection
                  breaking, sends the request to another worker (503 = full or draining; any
                  other 5xx also counts against the worker's breaker); no first byte within
                  first_token_timeout_s is 504, not retried (the worker may be generating)
    streaming     chunks relayed as they arrive, cut at the last complete SSE frame ("\\n\\n");
                  a worker silent for read_timeout_s, failing, or holding a frame open past
                  max_frame_bytes, or a stream still going after max_stream_s, ends with one
                  SSE error event and `data: [DONE]`, never retried; a client that stops
                  reading for read_timeout_s is cut off

At most `max_attempts` distinct workers are tried. Nothing reaches the client before the first
upstream chunk, so every failure before it is a clean OpenAI error, and every failure after it
an SSE error event. The bounds on a frame, a plain body and a stream's duration (each cut counted
in router_relay_limits_total) keep no worker or request holding memory or a connection for ever.

Slow is not dead. A worker's breaker counts what shows it cannot serve: no connection, a 5xx
other than 503, a connection broken before or during its answer, silence for read_timeout_s
mid-stream, a frame past max_frame_bytes (not SSE). Time alone does not count once the worker
has the request: no first byte within first_token_timeout_s (a long plain answer, a long
prefill, a turn in the worker's own queue) is a 504 counted in upstream_errors{kind="timeout"},
and a stream past max_stream_s is cut, but the worker is neither put aside nor tried last. One
that takes connections and never answers stops heartbeating (a stuck process) or reports itself
unhealthy (a dead engine), so the registry drops it. A plain answer too big to relay is the
request's doing, not the worker's.

A client that hangs up cancels the handler, in any phase: a queued request leaves the queue, an
open upstream response is closed (not released to the pool), which drops the worker connection
and makes the worker stop generating.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Final

from aiohttp import (
    ClientConnectionError,
    ClientConnectorError,
    ClientOSError,
    ClientPayloadError,
    ClientResponse,
    ClientSession,
    ClientTimeout,
    ServerDisconnectedError,
    TCPConnector,
    hdrs,
    web,
)
from multidict import CIMultiDict

from contract.errors import ServiceUnavailable, UpstreamFailed, UpstreamTimeout
from contract.logs import Outcome
from contract.sse import (
    EVENT_STREAM,
    FRAME_END,
    PROMPT_TOKENS_HEADER,
    error_event,
)
from contract.sse import HEADERS as SSE_HEADERS
from router.admission import Admission, Grant
from router.config import RouterConfig
from router.exchange import REQUEST_ID_HEADER, Exchange, body_usage, usage_reader
from router.metrics import CancelPhase, RelayLimit, RouterMetrics, UpstreamError

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
BUSY_RETRY_AFTER_S: Final = 1.0


def create_session(
    connect_timeout_s: float, headers: Mapping[str, str] | None = None
) -> ClientSession:
    """The one keep-alive session every relay shares; read timeouts are the relay's own.
    `headers` go on every worker request (the worker secret: worker.auth)."""
    connector = TCPConnector(
        limit=0,  # concurrency is bounded by admission (router.admission), not by a client pool
        # Shorter than the servers' (llama-server's cpp-httplib and uvicorn: 5 s), so we close
        # idle sockets first rather than write into one the server is closing.
        keepalive_timeout=4.0,
        ttl_dns_cache=60,
    )
    return ClientSession(
        connector=connector,
        timeout=ClientTimeout(
            total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s
        ),
        # Bytes go through untouched: ask for no compression and decode none.
        skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT_ENCODING),
        auto_decompress=False,
        trust_env=False,
        headers=headers,
    )


class Relay:
    """Sends each request to a worker that admission grants, relays the answer as it
    comes, and fails over to another worker only before the first byte (see above)."""

    def __init__(
        self,
        session: ClientSession,
        admission: Admission,
        metrics: RouterMetrics,
        config: RouterConfig,
    ) -> None:
        self._session = session
        self._admission = admission
        self._metrics = metrics
        self._max_attempts = config.max_attempts
        self._first_token_s = config.first_token_timeout_s
        self._gap_s = config.read_timeout_s
        self._queue_timeout_s = config.queue_timeout_s
        self._max_stream_s = config.max_stream_s
        self._max_frame = config.max_frame_bytes
        self._max_body = config.max_response_bytes

    async def forward(self, request: web.Request, exchange: Exchange) -> web.StreamResponse:
        """The worker's answer to `exchange`, from the first worker with room that gives one."""
        deadline = asyncio.get_running_loop().time() + self._queue_timeout_s
        tried: list[str] = []
        busy = False
        for _ in range(self._max_attempts):
            queued_at = time.perf_counter()
            grant = await self._admission.acquire(
                exchange.model, exchange.tenant, tried, deadline, exchange.affinity
            )
            if grant is None:
                break  # every worker of the model has been tried
            if tried:
                exchange.series.retries.inc()
            else:
                self._metrics.queue_wait.observe(time.perf_counter() - queued_at)
                self._metrics.overhead.observe(queued_at - exchange.arrived)
            tried.append(grant.upstream.worker_id)
            exchange.attempts, exchange.worker = len(tried), grant.upstream.worker_id
            trace = exchange.trace
            try:
                if trace is None:
                    outcome = await self._attempt(request, exchange, grant)
                else:  # the wait and the choice, then the attempt, whose context goes upstream
                    trace.phase("admission", queued_at, time.perf_counter(), worker=tried[-1])
                    with trace.attempt("attempt", worker=tried[-1]) as span:
                        outcome = await self._attempt(request, exchange, grant)
                        if isinstance(outcome, UpstreamError):
                            span.set_attribute("error.type", outcome.value)
            finally:
                self._admission.release(grant)
            if not isinstance(outcome, UpstreamError):
                return outcome
            busy = busy or outcome is UpstreamError.BUSY
        if busy:
            raise ServiceUnavailable(
                "Every worker for this model is at capacity; retry shortly.",
                retry_after_s=BUSY_RETRY_AFTER_S,
            )
        raise UpstreamFailed("No worker for this model could serve the request.")

    async def _attempt(
        self, request: web.Request, exchange: Exchange, grant: Grant
    ) -> web.StreamResponse | UpstreamError:
        """One worker: its answer relayed, or how it gave none (the request may go elsewhere)."""
        worker = grant.upstream.worker_id
        response: ClientResponse | None = None
        try:
            async with asyncio.timeout(self._first_token_s):
                try:
                    response = await self._post(grant, exchange)
                except ClientConnectionError as exc:  # refused, reset, connect timeout
                    # One line per failure; the breaker soon keeps requests off it.
                    logger.warning("worker %s unreachable (%r); trying another", worker, exc)
                    return self._refused(grant, UpstreamError.CONNECT)
                if response.status >= 500:
                    return self._status(grant, response)
                stream = response.content_type == EVENT_STREAM
                first = await (response.content.readany() if stream else self._body(response))
            if stream and not first:
                raise ClientPayloadError("the stream ended before its first byte")
        except TimeoutError:
            if response is not None:
                response.close()
            self._admission.slow(grant)  # it has the request: slow, not dead (see above)
            logger.warning("worker %s sent nothing in %ss", worker, self._first_token_s)
            raise UpstreamTimeout("The worker did not answer in time.") from None
        except (ClientPayloadError, ClientConnectionError) as exc:
            if response is not None:
                response.close()
            logger.warning("worker %s failed before answering (%r); trying another", worker, exc)
            return self._refused(grant, UpstreamError.BROKEN)
        except asyncio.CancelledError:
            if response is not None:
                response.close()  # the worker sees the connection drop and stops generating
            self._metrics.cancellations.labels(CancelPhase.WAITING).inc()
            raise
        self._admission.succeeded(grant)
        exchange.first_byte_s = time.perf_counter() - exchange.arrived
        exchange.series.first_byte.observe(exchange.first_byte_s)
        if not stream:
            response.release()
            return _plain(response, first, exchange)
        try:
            return await self._relay_stream(request, exchange, grant, response, first)
        except BaseException:
            # Not release(): the worker must see its connection drop and stop generating.
            response.close()
            raise

    async def _post(self, grant: Grant, exchange: Exchange) -> ClientResponse:
        """The worker's response headers. A pooled connection the server closed while idle
        fails as the request is written or before any answer; the request is sent once more,
        on another connection, without counting against the worker (a dead one refuses it)."""
        upstream = grant.upstream
        url = upstream.urls[exchange.api]
        if upstream.openai:
            openai = exchange.openai_request()
            body, headers = openai.body, openai.headers
        else:
            body, headers = exchange.body, exchange.upstream_headers
        if exchange.trace is not None:
            headers = exchange.trace.inject(headers)  # the attempt's traceparent
        try:
            return await self._session.post(url, data=body, headers=headers)
        except ClientConnectorError:
            raise  # no connection at all: not a stale one
        except (ServerDisconnectedError, ClientOSError) as exc:
            worker = upstream.worker_id
            logger.info("worker %s closed a pooled connection (%r); resending", worker, exc)
        return await self._session.post(url, data=body, headers=headers)

    def _body(self, response: ClientResponse) -> Awaitable[bytes]:
        """A plain answer, read whole, but no more than max_response_bytes of it."""
        length = response.content_length
        if length is not None and length <= self._max_body:
            return response.read()  # the parser stops at Content-Length
        return self._bounded_body(response)

    async def _bounded_body(self, response: ClientResponse) -> bytes:
        """A plain answer of unknown or excessive length: read up to max_response_bytes, else
        not relayed (502)."""
        limit = self._max_body
        if response.content_length is None:
            chunks: list[bytes] = []
            size = 0
            while chunk := await response.content.readany():
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
            else:
                return b"".join(chunks)
        response.close()
        self._metrics.relay_limits.labels(RelayLimit.BODY).inc()
        logger.warning("a plain answer over %d bytes was not relayed", limit)
        raise UpstreamFailed(f"The worker's answer is larger than the {limit} bytes relayed.")

    def _refused(self, grant: Grant, kind: UpstreamError) -> UpstreamError:
        self._admission.refused(grant, kind)
        return kind

    def _status(self, grant: Grant, response: ClientResponse) -> UpstreamError:
        """A 5xx before any byte: 503 is a full or draining worker, anything else a fault."""
        status = response.status
        response.release()
        if status == 503:
            return self._refused(grant, UpstreamError.BUSY)
        logger.warning("worker %s answered %d; trying another", grant.upstream.worker_id, status)
        return self._refused(grant, UpstreamError.STATUS)

    async def _relay_stream(
        self,
        request: web.Request,
        exchange: Exchange,
        grant: Grant,
        response: ClientResponse,
        first: bytes,
    ) -> web.StreamResponse:
        if exchange.meter is not None:  # charged from here on, however the stream ends
            exchange.meter.answered(response.headers.get(PROMPT_TOKENS_HEADER))
        out = web.StreamResponse(
            status=response.status,
            headers={
                **SSE_HEADERS,
                REQUEST_ID_HEADER: exchange.request_id,
                **exchange.rate_headers,
            },
        )
        try:
            async with asyncio.timeout(self._gap_s):
                await out.prepare(request)
            tail = await self._pump(exchange, grant, response, out, first)
            if tail is None:
                exchange.ended = Outcome.CUT_OFF
                self._cut_off(request, response)
                return out
            async with asyncio.timeout(self._gap_s):
                if tail:
                    await out.write(tail)
                await out.write_eof()
        except asyncio.CancelledError:
            self._metrics.cancellations.labels(CancelPhase.STREAMING).inc()
            raise
        except ConnectionResetError:
            # The client left before aiohttp noticed and cancelled us: same outcome, and the
            # prepared response goes back to aiohttp, which knows the connection is gone.
            self._metrics.cancellations.labels(CancelPhase.STREAMING).inc()
            response.close()
            exchange.ended = Outcome.CANCELLED
            return out
        except TimeoutError:
            exchange.ended = Outcome.CUT_OFF
            self._cut_off(request, response)
            return out
        response.release()
        return out

    def _cut_off(self, request: web.Request, response: ClientResponse) -> None:
        """The client stopped reading: drop both connections rather than wait on it."""
        logger.warning("client stopped reading a stream for %ss; cut off", self._gap_s)
        self._metrics.cancellations.labels(CancelPhase.STALLED).inc()
        response.close()
        if request.transport is not None:
            request.transport.abort()

    async def _pump(
        self,
        exchange: Exchange,
        grant: Grant,
        response: ClientResponse,
        out: web.StreamResponse,
        first: bytes,
    ) -> bytes | None:
        """Relay whole frames as they arrive; what is left to write, or None if the client
        stopped reading. Each wait is bounded by the gap, all of them by max_stream_s."""
        loop = asyncio.get_running_loop()
        gap_s = self._gap_s
        ends_at = loop.time() + self._max_stream_s  # the gap timer is never set past it
        gap = exchange.series.chunk_gap
        meter = exchange.meter
        take = usage_reader(exchange, grant.upstream.openai)
        pending = b""
        chunk = first
        last = time.perf_counter()
        writing = False
        try:
            async with asyncio.timeout(gap_s) as timer:
                # uvloop's clock moves once per loop turn: after a write or read that did not
                # wait, the deadline is the one armed, and the timer is left alone.
                armed = timer.when()
                while True:
                    data = pending + chunk if pending else chunk
                    end = data.rfind(FRAME_END) + 2
                    if end == 1:  # no frame boundary yet
                        if len(data) > self._max_frame:
                            return self._cut(exchange, grant, RelayLimit.FRAME)
                        pending = data
                    else:
                        # The common case is whole frames only: no copy.
                        frames, pending = (
                            (data, b"") if end == len(data) else (data[:end], data[end:])
                        )
                        if meter is not None:
                            frames = take(frames, meter)
                        writing = True
                        await out.write(frames)
                        writing = False
                    at = loop.time() + gap_s
                    if (at := at if at < ends_at else ends_at) != armed:
                        armed = at
                        timer.reschedule(at)
                    chunk = await response.content.readany()
                    if not chunk:
                        return pending  # a clean end: relay the worker's last bytes as they are
                    now = time.perf_counter()
                    gap.observe(now - last)
                    last = now
                    at = loop.time() + gap_s
                    if (at := at if at < ends_at else ends_at) != armed:
                        armed = at
                        timer.reschedule(at)
        except TimeoutError:
            return self._timed_out(exchange, grant, loop.time() >= ends_at, writing)
        except ConnectionResetError:
            raise  # the client's side, handled by the caller
        except (ClientPayloadError, ClientConnectionError):
            if writing:
                raise ConnectionResetError from None
            return self._failed_mid_stream(exchange, grant, UpstreamError.BROKEN)

    def _timed_out(
        self, exchange: Exchange, grant: Grant, past_end: bool, writing: bool
    ) -> bytes | None:
        """The gap timer fired: the stream ran past max_stream_s, the client stopped reading
        (None), or the worker went silent."""
        if past_end:
            return self._cut(exchange, grant, RelayLimit.DURATION)
        if writing:
            return None
        return self._failed_mid_stream(exchange, grant, UpstreamError.TIMEOUT)

    def _failed_mid_stream(self, exchange: Exchange, grant: Grant, kind: UpstreamError) -> bytes:
        """The worker went silent (TIMEOUT) or broke (BROKEN) mid-stream: counted against it."""
        exchange.ended = Outcome.ERROR
        self._admission.failed(grant, kind)
        if kind is UpstreamError.TIMEOUT:
            logger.warning("worker %s went silent mid-stream", grant.upstream.worker_id)
            return error_event(UpstreamTimeout("The worker stopped sending in time."))
        logger.warning("worker %s failed mid-stream", grant.upstream.worker_id)
        return error_event(UpstreamFailed("The worker failed mid-stream."))

    def _cut(self, exchange: Exchange, grant: Grant, limit: RelayLimit) -> bytes:
        """A stream past a bound: a frame that never ends (the worker's fault, not SSE), or the
        stream's duration (nobody's: see above)."""
        exchange.ended = Outcome.CUT_OFF
        self._metrics.relay_limits.labels(limit).inc()
        worker = grant.upstream.worker_id
        if limit is RelayLimit.FRAME:
            self._admission.failed(grant, UpstreamError.BROKEN)
            logger.warning("worker %s sent a frame over %d bytes", worker, self._max_frame)
            return error_event(UpstreamFailed("The worker sent an event too large to relay."))
        logger.warning("a stream from worker %s ran past %gs", worker, self._max_stream_s)
        return error_event(UpstreamTimeout(f"The stream ran past {self._max_stream_s:g} s."))


def _plain(response: ClientResponse, body: bytes, exchange: Exchange) -> web.Response:
    headers = CIMultiDict(
        (k, v) for k, v in response.headers.items() if k.lower() not in _DROPPED_HEADERS
    )
    headers.update(exchange.rate_headers)
    meter = exchange.meter
    if meter is not None and response.status == 200:
        body_usage(body, meter, response.headers.get(PROMPT_TOKENS_HEADER))
    return web.Response(body=body, status=response.status, headers=headers)
