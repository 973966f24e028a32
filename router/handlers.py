"""HTTP handlers: chat completions (dispatch), models, health and metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import orjson
from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST

from contract.errors import (
    ApiError,
    ModelNotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from contract.wire import model_object, parse_chat_request
from router.access import OPEN
from router.appkeys import ACCESS, CONFIG, METRICS, RELAY, REQUEST_ID, VIEW
from router.intake import read_body
from router.metrics import CANCELLED, OTHER_MODEL, status_class
from router.proxy import TokenMeter
from router.snapshot import RegistryView

JSON: Final = "application/json"
NO_WORKER_RETRY_AFTER_S: Final = 1.0
NO_PROJECT: Final = "none"  # the project label of requests without a known project
# Refusals before any worker is involved, by status; 502/504 are upstream errors, not these.
_REJECTION_REASONS: Final = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "model_not_found",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    arrived = time.perf_counter()
    app = request.app
    metrics = app[METRICS]
    view = app[VIEW]
    series = metrics.chat_series(OTHER_MODEL, False)
    status = 500
    access = app[ACCESS]
    scope = OPEN
    try:
        scope = await access.scope(request)  # the key first: 401 before anything else
        content_type = _json_content_type(request)
        config = app[CONFIG]
        body = await read_body(request, config.max_body_bytes, config.body_timeout_s)
        chat = parse_chat_request(body)  # the one parse; `body` goes upstream unchanged
        model = chat.model
        access.check_model(scope, model)
        series = metrics.chat_series(model if model in view.models else OTHER_MODEL, chat.stream)
        candidates = view.candidates(model)
        if not candidates:
            raise _no_worker(view, model)
        decision = await access.admit(scope)
        limited = scope.key is not None and scope.key.tpm is not None
        meter = TokenMeter() if limited else None
        try:
            response = await app[RELAY].forward(
                request,
                body,
                content_type,
                request[REQUEST_ID],
                model,
                series,
                arrived,
                decision.headers(),
                meter,
            )
        finally:
            if meter is not None:  # charged however the response ended, from its real usage
                await asyncio.shield(access.charge(scope, meter.total_tokens))
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        reason = _REJECTION_REASONS.get(status)
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


def _json_content_type(request: web.Request) -> str:
    """The Content-Type to forward: JSON, or absent (taken as JSON); anything else is 415."""
    value = request.headers.get(hdrs.CONTENT_TYPE)
    if value is None:
        return JSON
    if value == JSON or value.partition(";")[0].strip().lower() == JSON:
        return value
    raise UnsupportedMediaType(
        f"Unsupported Content-Type {value.partition(';')[0]!r}; send application/json."
    )


def _no_worker(view: RegistryView, model: str) -> ApiError:
    if model in view.models:
        return ServiceUnavailable(
            f"No worker is serving model `{model}` right now; retry shortly.",
            retry_after_s=NO_WORKER_RETRY_AFTER_S,
        )
    if view.loaded_at is None:
        # Before the first registry read every model looks unknown; do not call it missing.
        return ServiceUnavailable(
            "The router has not loaded the worker registry yet; retry shortly.",
            retry_after_s=NO_WORKER_RETRY_AFTER_S,
        )
    return ModelNotFound(model)


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
    request.app[METRICS].requests.labels("models", "", f"{status // 100}xx").inc()


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
