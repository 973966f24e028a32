"""The worker's HTTP surface: chat completions (JSON or SSE), models, health, metrics.

Client disconnects cancel the handler (the app runs with handler_cancellation=True); every
path out of a generation closes the engine stream, which stops the engine at the next token,
and gives its slot back, so load counters return to exact values. Engines raise engine errors
(worker.engine); `engine_api_error` is the one place they become HTTP errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from contract import sse
from contract.errors import (
    ApiError,
    ContextLengthExceeded,
    InvalidRequest,
    ModelNotFound,
    ServiceUnavailable,
    for_http_status,
    internal_error_body,
)
from contract.wire import ChatRequest, model_object, parse_chat_request
from worker import appkeys
from worker.completions import ChunkWriter, completion, new_completion_id
from worker.engine import (
    EngineError,
    EngineStopped,
    Finished,
    InvalidPrompt,
    PromptTooLong,
    UnsupportedFormat,
)
from worker.metrics import CONTENT_TYPE

logger = logging.getLogger(__name__)

JSON = "application/json"


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON)


def error_response(error: ApiError, extra_headers: dict[str, str] | None = None) -> web.Response:
    headers = {**error.headers(), **(extra_headers or {})}
    return web.Response(body=error.body(), status=error.status, content_type=JSON, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as an OpenAI error body; nothing leaks a traceback."""
    metrics = request.app[appkeys.METRICS]
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status: int | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        return error_response(exc)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, route)
        status = 500
        return web.Response(body=internal_error_body(), status=500, content_type=JSON)
    finally:
        # status stays None when the handler was cancelled (client gone).
        metrics.observe_request(route, status)


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (unknown route, wrong method, body too large) in OpenAI's shape."""
    error = for_http_status(exc.status, request.method, request.path, exc.text or exc.reason)
    if error is None:
        return web.Response(body=internal_error_body(), status=exc.status, content_type=JSON)
    allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    response = error_response(error, allow)
    response.set_status(exc.status)
    return response


def engine_api_error(exc: EngineError) -> ApiError:
    """What the client sees of an engine's refusal."""
    if isinstance(exc, PromptTooLong):
        return ContextLengthExceeded(
            f"This model's maximum context length is {exc.n_ctx} tokens. However, your "
            f"messages resulted in {exc.prompt_tokens} tokens. Please reduce the length of the "
            "messages.",
            param="messages",
        )
    if isinstance(exc, InvalidPrompt):
        return InvalidRequest(exc.message, param="messages")
    if isinstance(exc, UnsupportedFormat):
        return InvalidRequest(exc.message, param="response_format")
    if isinstance(exc, EngineStopped):
        return ServiceUnavailable(exc.message)
    return ApiError(str(exc))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    config = request.app[appkeys.CONFIG]
    chat = parse_chat_request(await request.read())
    if chat.model != config.model_id:
        raise ModelNotFound(chat.model)
    slots = request.app[appkeys.SLOTS]
    metrics = request.app[appkeys.METRICS]
    arrived = time.monotonic()
    try:
        async with slots.slot():
            metrics.queue_wait.observe(time.monotonic() - arrived)
            return await _generate(request, chat)
    except ServiceUnavailable:
        metrics.rejected.inc()
        raise


async def _generate(request: web.Request, chat: ChatRequest) -> web.StreamResponse:
    engine = request.app[appkeys.ENGINE]
    metrics = request.app[appkeys.METRICS]
    started = time.monotonic()
    stream = engine.stream(chat.messages, chat.sampling)
    try:
        try:
            # Errors before the first output (context too long, engine failure) are clean
            # HTTP errors; the first output also marks the end of the prompt phase.
            first = await anext(stream)
        except StopAsyncIteration:
            raise RuntimeError("engine stream ended without Finished") from None
        except EngineError as exc:
            raise engine_api_error(exc) from None
        except Exception:
            metrics.engine_errors.inc()
            raise
        first_at = time.monotonic()
        if chat.stream:
            response, finished = await _send_stream(request, chat, first, stream)
        else:
            response, finished = await _collect(request, first, stream)
        if finished is not None:
            metrics.observe_generation(
                prompt_tokens=finished.prompt_tokens,
                completion_tokens=finished.completion_tokens,
                prompt_s=first_at - started,
                generation_s=time.monotonic() - first_at,
            )
        return response
    finally:
        # Stops the engine at its next token whatever happened (done, error, cancelled).
        if isinstance(stream, AsyncGenerator):
            await stream.aclose()


async def _collect(
    request: web.Request,
    first: str | Finished,
    rest: AsyncIterator[str | Finished],
) -> tuple[web.StreamResponse, Finished]:
    parts: list[str] = []
    item = first
    while not isinstance(item, Finished):
        parts.append(item)
        item = await _next_output(request, rest)
    body = completion(
        new_completion_id(), request.app[appkeys.CONFIG].model_id, "".join(parts), item
    )
    return json_response(body), item


async def _send_stream(
    request: web.Request,
    chat: ChatRequest,
    first: str | Finished,
    rest: AsyncIterator[str | Finished],
) -> tuple[web.StreamResponse, Finished | None]:
    chunks = ChunkWriter(
        new_completion_id(),
        request.app[appkeys.CONFIG].model_id,
        include_usage=chat.include_usage,
        usage_trailer=sse.USAGE_TRAILER_HEADER in request.headers,
    )
    response = web.StreamResponse(headers=sse.HEADERS)
    await response.prepare(request)
    try:
        await response.write(chunks.role())
        item = first
        while not isinstance(item, Finished):
            if item:
                await response.write(chunks.content(item))
            try:
                item = await _next_output(request, rest)
            except ApiError as exc:
                await response.write(sse.error_event(exc))
                await response.write_eof()
                return response, None
        await response.write(chunks.finish(item))
        await response.write_eof()
    except ConnectionResetError:
        # The client left between writes; the caller's finally stops the engine.
        logger.debug("client disconnected mid-stream")
        return response, None
    return response, item


async def _next_output(
    request: web.Request, stream: AsyncIterator[str | Finished]
) -> str | Finished:
    """The next engine output; an engine failure becomes an ApiError the caller can render."""
    try:
        return await anext(stream)
    except StopAsyncIteration:
        logger.error("engine stream ended without Finished")
    except EngineError as exc:
        raise engine_api_error(exc) from None
    except Exception:
        logger.exception("engine failed mid-generation")
    request.app[appkeys.METRICS].engine_errors.inc()
    raise ApiError("The server had an error while processing your request.")


async def list_models(request: web.Request) -> web.Response:
    model = model_object(request.app[appkeys.CONFIG].model_id, request.app[appkeys.STARTED_S])
    return json_response({"object": "list", "data": [model]})


async def get_model(request: web.Request) -> web.Response:
    model_id = request.app[appkeys.CONFIG].model_id
    if request.match_info["model"] != model_id:
        raise ModelNotFound(request.match_info["model"])
    return json_response(model_object(model_id, request.app[appkeys.STARTED_S]))


async def health(request: web.Request) -> web.Response:
    slots = request.app[appkeys.SLOTS]
    draining = slots.draining
    body = {
        "status": "unavailable" if draining else "ok",
        "model": request.app[appkeys.CONFIG].model_id,
        "state": "draining" if draining else "ready",
        "running": slots.running,
        "waiting": slots.waiting,
        "slots": slots.slots,
    }
    return json_response(body, status=503 if draining else 200)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[appkeys.METRICS].render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
