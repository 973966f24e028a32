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
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
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
    InvalidParameter,
    InvalidPrompt,
    Output,
    Prompt,
    PromptTooLong,
    UnsupportedFormat,
)
from worker.logprobs import Logprobs, TokenLogprob

logger = logging.getLogger(__name__)

JSON = "application/json"
Outputs = AsyncIterator[Output]
Entries = Sequence[TokenLogprob]


class Answer(Protocol):
    """How one kind of completion (chat, text) is written."""

    @property
    def prompt_param(self) -> str:
        """The request field a refused prompt is blamed on (`messages`, `prompt`)."""
        ...

    def whole(self, text: str, finished: Finished, logprobs: Entries) -> dict[str, Any]:
        """The JSON body of a whole answer; `logprobs` are every token's, when asked for."""
        ...

    def opening(self) -> bytes:
        """The SSE frames before the first output (chat: the role delta)."""
        ...

    def feed(self, text: str, logprobs: Entries) -> bytes:
        """The SSE frames for one text output and the logprobs of the tokens since the last;
        what it cannot send yet (e.g. a tool call's text) it holds, logprobs included."""
        ...

    def closing(self, finished: Finished, logprobs: Entries) -> bytes:
        """What is held back (text, logprobs not yet sent), the finish chunk, the usage chunk or
        trailer, then [DONE]."""
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
    if isinstance(exc, UnsupportedFormat | InvalidParameter):
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
    request: web.Request, answer: Answer, first: Output, rest: Outputs
) -> tuple[web.StreamResponse, Finished]:
    parts: list[str] = []
    entries: list[TokenLogprob] = []
    item = first
    while not isinstance(item, Finished):
        if isinstance(item, Logprobs):
            entries.extend(item.entries)
        else:
            parts.append(item)
        item = await _next_output(request, rest)
    body = orjson.dumps(answer.whole("".join(parts), item, entries))
    return web.Response(body=body, content_type=JSON), item


async def _send_stream(
    request: web.Request, answer: Answer, first: Output, rest: Outputs
) -> tuple[web.StreamResponse, Finished | None]:
    response = web.StreamResponse(headers=sse.HEADERS)
    await response.prepare(request)
    try:
        opening = answer.opening()
        if opening:
            await response.write(opening)
        item = first
        pending: list[TokenLogprob] = []  # logprobs of tokens whose text has not gone out yet
        while not isinstance(item, Finished):
            if isinstance(item, Logprobs):
                pending.extend(item.entries)
            else:
                frames = answer.feed(item, pending)
                pending = []
                if frames:
                    await response.write(frames)
            try:
                item = await _next_output(request, rest)
            except ApiError as exc:
                await response.write(sse.error_event(exc))
                await response.write_eof()
                return response, None
        await response.write(answer.closing(item, pending))
        await response.write_eof()
    except ConnectionResetError:
        # The client left between writes; the caller's finally stops the engine.
        logger.debug("client disconnected mid-stream")
        return response, None
    return response, item


async def _next_output(request: web.Request, outputs: Outputs) -> Output:
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
