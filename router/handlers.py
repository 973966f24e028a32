"""HTTP handlers: chat completions (dispatch), models, health and metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import orjson
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST

from contract.errors import ApiError, ModelNotFound
from contract.telemetry import status_class
from contract.wire import model_object, parse_chat_request
from router.access import OPEN
from router.appkeys import ACCESS, CONFIG, METRICS, RELAY, REQUEST_ID, VIEW
from router.exchange import Exchange, TokenMeter
from router.intake import read_body
from router.metrics import CANCELLED, OTHER_MODEL, Rejection, Route
from router.middleware import JSON

NO_PROJECT: Final = "none"  # the project label of requests without a known project
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


async def chat_completions(request: web.Request) -> web.StreamResponse:
    arrived = time.perf_counter()
    app = request.app
    metrics = app[METRICS]
    series = metrics.chat_series(OTHER_MODEL, False)
    status = 500
    access = app[ACCESS]
    scope = OPEN
    try:
        scope = await access.scope(request)  # the key first: 401 before anything else
        config = app[CONFIG]
        body = await read_body(request, config.max_body_bytes, config.body_timeout_s)
        chat = parse_chat_request(body)  # the one parse; `body` goes upstream unchanged
        model = chat.model
        access.check_model(scope, model)
        view = app[VIEW]
        series = metrics.chat_series(model if model in view.models else OTHER_MODEL, chat.stream)
        if not view.candidates(model):
            raise view.no_worker(model)  # before the rate limit counts the request
        decision = await access.admit(scope)
        limited = scope.key is not None and scope.key.tpm is not None
        meter = TokenMeter() if limited else None
        exchange = Exchange(
            body=body,
            request_id=request[REQUEST_ID],
            model=model,
            series=series,
            arrived=arrived,
            rate_headers=decision.headers(),
            meter=meter,
        )
        try:
            response = await app[RELAY].forward(request, exchange)
        finally:
            if meter is not None:  # charged however the response ended, from its real usage
                await asyncio.shield(access.charge(scope, meter.total_tokens))
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        reason = _REJECTIONS.get(status)
        if reason is not None:
            metrics.rejections.labels(reason).inc()
        raise
    except asyncio.CancelledError:
        status = CANCELLED
        raise
    finally:
        series.finish(status, time.perf_counter() - arrived)
        # Ids from Redis records, never from input: "none" when auth is off or the key was bad.
        project = scope.project_id or NO_PROJECT
        endpoint = scope.endpoint.name if scope.endpoint else ""
        metrics.project_requests.labels(project, endpoint, status_class(status)).inc()


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


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[METRICS].render(), headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST}
    )
