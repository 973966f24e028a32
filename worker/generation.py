"""One generation, from a slot to the last byte, whatever kind of completion it answers.

A handler parses its request and hands `generate` the prompt, the sampling parameters and an
`Answer` (worker.completions), which knows how its kind of completion is written: whole as JSON,
or streamed as SSE frames. Everything else is shared: the slot, errors before the first output as
clean HTTP errors (`engine_api_error` is the one place engine errors become HTTP errors), errors
after it as an SSE error event, the generation metrics, and closing the engine stream on every
way out, which stops the engine at its next token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

import orjson
from aiohttp import web

from contract import sse
from contract.errors import (
    ApiError,
    ContextLengthExceeded,
    InvalidRequest,
    ServiceUnavailable,
)
from contract.wire import SamplingParams
from worker import appkeys
from worker.engine import (
    EngineError,
    EngineStopped,
    Finished,
    InvalidPrompt,
    Prompt,
    PromptTooLong,
    UnsupportedFormat,
)

logger = logging.getLogger(__name__)

JSON = "application/json"
Outputs = AsyncIterator[str | Finished]


class Answer(Protocol):
    """How one kind of completion (chat, text) is written."""

    @property
    def prompt_param(self) -> str:
        """The request field a refused prompt is blamed on (`messages`, `prompt`)."""
        ...

    def whole(self, text: str, finished: Finished) -> dict[str, Any]:
        """The JSON body of a whole answer."""
        ...

    def opening(self) -> bytes:
        """The SSE frames before the first output (chat: the role delta)."""
        ...

    def feed(self, text: str) -> bytes:
        """The SSE frames for one engine output (may hold text back, e.g. a tool call)."""
        ...

    def closing(self, finished: Finished) -> bytes:
        """What is held back, the finish chunk, the usage chunk or trailer, then [DONE]."""
        ...


def engine_api_error(exc: EngineError, prompt_param: str = "messages") -> ApiError:
    """What the client sees of an engine's refusal; `prompt_param` names the prompt's field."""
    if isinstance(exc, PromptTooLong):
        return ContextLengthExceeded(
            f"This model's maximum context length is {exc.n_ctx} tokens. However, your "
            f"{prompt_param} resulted in {exc.prompt_tokens} tokens. Please reduce the length "
            f"of the {prompt_param}.",
            param=prompt_param,
        )
    if isinstance(exc, InvalidPrompt):
        return InvalidRequest(exc.message, param=prompt_param)
    if isinstance(exc, UnsupportedFormat):
        return InvalidRequest(exc.message, param=exc.param)
    if isinstance(exc, EngineStopped):
        return ServiceUnavailable(exc.message)
    return ApiError(str(exc))


async def generate(
    request: web.Request, prompt: Prompt, sampling: SamplingParams, stream: bool, answer: Answer
) -> web.StreamResponse:
    """Wait for a slot (503 if refused), then generate and answer."""
    slots = request.app[appkeys.SLOTS]
    metrics = request.app[appkeys.METRICS]
    arrived = time.monotonic()
    try:
        async with slots.slot():
            metrics.queue_wait.observe(time.monotonic() - arrived)
            return await _generate(request, prompt, sampling, stream, answer)
    except ServiceUnavailable:
        metrics.rejected.inc()
        raise


async def _generate(
    request: web.Request, prompt: Prompt, sampling: SamplingParams, stream: bool, answer: Answer
) -> web.StreamResponse:
    engine = request.app[appkeys.ENGINE]
    metrics = request.app[appkeys.METRICS]
    started = time.monotonic()
    outputs = engine.stream(prompt, sampling)
    try:
        try:
            # Errors before the first output (context too long, engine failure) are clean
            # HTTP errors; the first output also marks the end of the prompt phase.
            first = await anext(outputs)
        except StopAsyncIteration:
            raise RuntimeError("engine stream ended without Finished") from None
        except EngineError as exc:
            raise engine_api_error(exc, answer.prompt_param) from None
        except Exception:
            metrics.engine_errors.inc()
            raise
        first_at = time.monotonic()
        if stream:
            response, finished = await _send_stream(request, answer, first, outputs)
        else:
            response, finished = await _collect(request, answer, first, outputs)
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
        if isinstance(outputs, AsyncGenerator):
            await outputs.aclose()


async def _collect(
    request: web.Request, answer: Answer, first: str | Finished, rest: Outputs
) -> tuple[web.StreamResponse, Finished]:
    parts: list[str] = []
    item = first
    while not isinstance(item, Finished):
        parts.append(item)
        item = await _next_output(request, rest)
    body = orjson.dumps(answer.whole("".join(parts), item))
    return web.Response(body=body, content_type=JSON), item


async def _send_stream(
    request: web.Request, answer: Answer, first: str | Finished, rest: Outputs
) -> tuple[web.StreamResponse, Finished | None]:
    response = web.StreamResponse(headers=sse.HEADERS)
    await response.prepare(request)
    try:
        opening = answer.opening()
        if opening:
            await response.write(opening)
        item = first
        while not isinstance(item, Finished):
            frames = answer.feed(item)
            if frames:
                await response.write(frames)
            try:
                item = await _next_output(request, rest)
            except ApiError as exc:
                await response.write(sse.error_event(exc))
                await response.write_eof()
                return response, None
        await response.write(answer.closing(item))
        await response.write_eof()
    except ConnectionResetError:
        # The client left between writes; the caller's finally stops the engine.
        logger.debug("client disconnected mid-stream")
        return response, None
    return response, item


async def _next_output(request: web.Request, outputs: Outputs) -> str | Finished:
    """The next engine output; an engine failure becomes an ApiError the caller can render."""
    try:
        return await anext(outputs)
    except StopAsyncIteration:
        logger.error("engine stream ended without Finished")
    except EngineError as exc:
        raise engine_api_error(exc) from None
    except Exception:
        logger.exception("engine failed mid-generation")
    request.app[appkeys.METRICS].engine_errors.inc()
    raise ApiError("The server had an error while processing your request.")
