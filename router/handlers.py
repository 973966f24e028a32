"""HTTP handlers: the relayed endpoints (chat and text completions, embeddings), models, health
and metrics.

Every relayed endpoint runs the same `dispatch` (auth, model check, admission, relay with
failover, metering, metrics); an `Endpoint` says only how to parse its body, which worker URL
to post it to, its metrics label, and how many tokens a request may generate (what admission
reserves against a key's TPM, router.access).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import orjson
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST

from contract.embeddings import EmbeddingsRequest, parse_embeddings_request
from contract.errors import ApiError, ModelNotFound
from contract.telemetry import status_class
from contract.text import TextRequest, parse_text_request
from contract.wire import ChatRequest, model_object, parse_chat_request
from router.access import OPEN, Scope
from router.affinity import AffineChat, Affinity, chat_affinity, parse_affine_chat
from router.appkeys import ACCESS, CONFIG, METRICS, RELAY, REQUEST_ID, VIEW
from router.exchange import Exchange
from router.intake import read_body
from router.metrics import (
    CANCELLED,
    OTHER_MODEL,
    Rejection,
    RequestSeries,
    Route,
    RouterMetrics,
)
from router.middleware import JSON
from router.tracing import REQUEST_LOG, Report, report, request_span
from router.upstream import Api

NO_PROJECT: Final = "none"  # the project label of requests without a known project
_NO_HEADERS: Final[Mapping[str, str]] = {}
# Refusals before any worker is involved, by status; 502/504 are upstream errors, not these.
_REJECTIONS: Final = {
    400: Rejection.INVALID_REQUEST,
    401: Rejection.INVALID_API_KEY,
    404: Rejection.MODEL_NOT_FOUND,
    408: Rejection.REQUEST_TIMEOUT,
    413: Rejection.PAYLOAD_TOO_LARGE,
    415: Rejection.UNSUPPORTED_MEDIA_TYPE,
    429: Rejection.RATE_LIMITED,
    503: Rejection.UNAVAILABLE,
}


class Routable(Protocol):
    """What dispatch reads of a parsed request."""

    @property
    def model(self) -> str: ...

    @property
    def stream(self) -> bool: ...


R = TypeVar("R", bound=Routable)


@dataclass(frozen=True, slots=True)
class Endpoint(Generic[R]):
    route: Route  # the `endpoint` metrics label
    api: Api  # the worker URL the body goes to, unchanged
    parse: Callable[[bytes], R]  # validates the whole body, as the worker will
    # The most completion tokens a request may generate, all choices together, given the
    # length of a choice that names none.
    length_bound: Callable[[R, int], int]
    # The cache-aware policy's reading of a request and its headers (router.affinity); None:
    # no affinity is computed (every other policy, every other endpoint).
    affinity: Callable[[R, Mapping[str, str]], Affinity | None] | None = None


def _chat_length(request: ChatRequest, default: int) -> int:
    return (request.sampling.max_tokens or default) * request.n


def _text_length(request: TextRequest, default: int) -> int:
    return request.sampling.max_tokens or default


def _no_completion(request: EmbeddingsRequest, default: int) -> int:
    return 0


CHAT: Final = Endpoint(Route.CHAT_COMPLETIONS, Api.CHAT, parse_chat_request, _chat_length)


def _affine_length(chat: AffineChat, default: int) -> int:
    return _chat_length(chat.request, default)


AFFINE_CHAT: Final = Endpoint(
    Route.CHAT_COMPLETIONS, Api.CHAT, parse_affine_chat, _affine_length, chat_affinity
)
COMPLETIONS: Final = Endpoint(Route.COMPLETIONS, Api.COMPLETIONS, parse_text_request, _text_length)
EMBEDDINGS: Final = Endpoint(
    Route.EMBEDDINGS, Api.EMBEDDINGS, parse_embeddings_request, _no_completion
)


async def dispatch(request: web.Request, endpoint: Endpoint[R]) -> web.StreamResponse:
    arrived = time.perf_counter()
    app = request.app
    metrics = app[METRICS]
    route = endpoint.route
    series = metrics.series(route, OTHER_MODEL, False)
    status = 500
    access = app[ACCESS]
    scope = OPEN
    config = app[CONFIG]
    span = None if config.otlp_endpoint is None else request_span(request, route, arrived)
    model = ""
    exchange: Exchange | None = None
    try:
        scope = await access.scope(request)  # the key first: 401 before anything else
        body = await read_body(request, config.max_body_bytes, config.body_timeout_s)
        parsed = endpoint.parse(body)  # the one parse; `body` goes upstream unchanged
        model = parsed.model
        access.check_model(scope, model)
        view = app[VIEW]
        series = metrics.series(
            route, model if model in view.models else OTHER_MODEL, parsed.stream
        )
        if not view.candidates(model):
            raise view.no_worker(model)  # before the rate limit counts the request
        ticket = None  # without a key (auth off): nothing metered, no Redis call
        if scope.key is not None:
            bound = endpoint.length_bound(parsed, config.reserve_max_tokens)
            ticket = await access.admit(scope.key, len(body), bound)
        affine = endpoint.affinity
        exchange = Exchange(
            body=body,
            request_id=request[REQUEST_ID],
            model=model,
            series=series,
            arrived=arrived,
            rate_headers=_NO_HEADERS if ticket is None else ticket.decision.headers(),
            meter=None if ticket is None else ticket.meter,
            api=endpoint.api,
            tenant=scope.project_id or "",
            trace=span,
            affinity=None if affine is None else affine(parsed, request.headers),
        )
        try:
            response = await app[RELAY].forward(request, exchange)
        finally:
            if ticket is not None:  # settled once, however the request ended
                series.count_tokens(ticket.meter.prompt_tokens, ticket.meter.completion_tokens)
                access.settle_soon(ticket)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        if (reason := _REJECTIONS.get(status)) is not None:
            metrics.rejections.labels(reason).inc()
        raise
    except asyncio.CancelledError:
        status = CANCELLED
        raise
    finally:
        elapsed = _finish(metrics, series, scope, status, arrived)
        if span is not None or REQUEST_LOG.isEnabledFor(logging.INFO):
            report(Report(request, route, scope, model, status, elapsed), exchange, span)


def _finish(
    metrics: RouterMetrics, series: RequestSeries, scope: Scope, status: int, arrived: float
) -> float:
    """Count the finished request; its duration."""
    elapsed = time.perf_counter() - arrived
    series.finish(status, elapsed)
    # Ids from Redis records, never from input: "none" when auth is off or the key was bad.
    project = scope.project_id or NO_PROJECT
    named = scope.endpoint.name if scope.endpoint else ""
    metrics.count_project_request(project, named, status)
    return elapsed


# Partials, not wrappers: no extra coroutine frame per request (aiohttp sees through them).
chat_completions = functools.partial(dispatch, endpoint=CHAT)
completions = functools.partial(dispatch, endpoint=COMPLETIONS)
embeddings = functools.partial(dispatch, endpoint=EMBEDDINGS)
affine_chat_completions = functools.partial(dispatch, endpoint=AFFINE_CHAT)  # cache-aware


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type=JSON)


async def list_models(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    scope = await request.app[ACCESS].scope(request)
    models = sorted(m for m in view.ready if scope.allows(m))
    data = [model_object(m, view.models.get(m, 0)) for m in models]
    _count_models(request, 200)
    return _json({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    model = request.match_info["model"]
    scope = await request.app[ACCESS].scope(request)
    if model not in view.ready or not scope.allows(model):
        _count_models(request, 404)
        raise ModelNotFound(model)
    _count_models(request, 200)
    return _json(model_object(model, view.models.get(model, 0)))


def _count_models(request: web.Request, status: int) -> None:
    request.app[METRICS].requests.labels(Route.MODELS, "", status_class(status)).inc()


async def health(request: web.Request) -> web.Response:
    view = request.app[VIEW]
    age = view.registry_age_s()
    return _json(
        {
            "status": "ok",
            "workers": len(view.upstreams),
            "models": len(view.ready),
            "registry_age_s": None if age is None else round(age, 3),
        }
    )


async def ready(request: web.Request) -> web.Response:
    """Readiness: 503 until the first full registry read, 200 from then on. A router that
    loses Redis later keeps serving its last view (and says so in its staleness gauge), so
    it stays ready; /health stays 200 throughout (liveness)."""
    age = request.app[VIEW].registry_age_s()
    if age is None:
        return _json({"status": "loading", "registry_age_s": None}, status=503)
    return _json({"status": "ready", "registry_age_s": round(age, 3)})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(), headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST}
    )
