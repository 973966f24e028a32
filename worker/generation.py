"""One generation, from a slot to the last byte, whatever kind of completion it answers.

A handler parses its request and hands `generate` the prompt, the sampling parameters, the
number of choices and an `Answer` (worker.completions), which knows how its kind of completion is
written: whole as JSON, or streamed as SSE frames. The choices run one after another in the
request's one slot, so slot accounting stays one stream per slot. Everything else is shared: the
slot, errors before the first output as clean HTTP errors (`engine_api_error` is the one place
engine errors become HTTP errors), errors after it as an SSE error event, the generation metrics,
and closing the engine stream on every way out, which stops the engine at its next token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, replace
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
from contract.logs import Outcome
from contract.wire import SamplingParams
from worker import appkeys
from worker.completions import Choice
from worker.engine import (
    EngineError,
    EngineStopped,
    Finished,
    InvalidParameter,
    InvalidPrompt,
    OnPrompt,
    Output,
    Prompt,
    PromptTooLong,
    UnsupportedFormat,
)
from worker.logprobs import Logprobs, TokenLogprob
from worker.tracing import Tally, open_tally, reported

logger = logging.getLogger(__name__)

JSON = "application/json"
Outputs = AsyncIterator[Output]
Entries = Sequence[TokenLogprob]


class ChoiceStream(Protocol):
    """How one choice of a streamed answer is written."""

    def opening(self) -> bytes:
        """The SSE frames before the choice's first output (chat: the role delta)."""
        ...

    def feed(self, text: str, logprobs: Entries) -> bytes:
        """The SSE frames for one text output and the logprobs of the tokens since the last;
        what it cannot send yet (e.g. a tool call's text) it holds, logprobs included."""
        ...

    def finish(self, finished: Finished, logprobs: Entries) -> bytes:
        """What is held back (text, logprobs not yet sent), then the choice's finish chunk."""
        ...


class Answer(Protocol):
    """How one kind of completion (chat, text) is written, whole or streamed, for n choices."""

    @property
    def prompt_param(self) -> str:
        """The request field a refused prompt is blamed on (`messages`, `prompt`)."""
        ...

    def whole(self, choices: Sequence[Choice]) -> dict[str, Any]:
        """The JSON body of a whole answer; a choice's logprobs are every token's, when asked."""
        ...

    def choice(self, index: int) -> ChoiceStream:
        """The writer of streamed choice `index`."""
        ...

    def end(self, finished: Sequence[Finished]) -> bytes:
        """What ends a stream after its last choice: the usage chunk or trailer, then [DONE]."""
        ...


def choice_sampling(sampling: SamplingParams, index: int) -> SamplingParams:
    """Choice i samples with seed + i, so a seeded request's choices differ yet repeat."""
    if index == 0 or sampling.seed is None:
        return sampling
    return replace(sampling, seed=sampling.seed + index)


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
    request: web.Request,
    prompt: Prompt,
    sampling: SamplingParams,
    stream: bool,
    answer: Answer,
    n: int = 1,
) -> web.StreamResponse:
    """Wait for a slot (503 if refused), then generate the n choices one after another in it."""
    tally = open_tally(request)  # None unless the request log or tracing is on
    generation = _Generation(request, prompt, sampling, answer, n, tally)
    if tally is None:
        return await _generate(generation, stream)
    return await reported(tally, _generate(generation, stream))


async def _generate(generation: _Generation, stream: bool) -> web.StreamResponse:
    async with held_slot(generation.request):
        if stream:
            return await _send_stream(generation)
        return await _collect(generation)


@asynccontextmanager
async def held_slot(request: web.Request) -> AsyncIterator[None]:
    """One of the worker's slots for the body (503 if refused), its wait and refusal counted."""
    metrics = request.app[appkeys.METRICS]
    arrived = time.monotonic()
    try:
        async with request.app[appkeys.SLOTS].slot():
            metrics.queue_wait.observe(time.monotonic() - arrived)
            yield
    except ServiceUnavailable:
        metrics.rejected.inc()
        raise


@dataclass(frozen=True, slots=True)
class _Generation:
    request: web.Request
    prompt: Prompt
    sampling: SamplingParams
    answer: Answer
    n: int
    tally: Tally | None

    async def outputs(
        self, index: int, *, sent: bool, on_prompt: OnPrompt | None = None
    ) -> AsyncGenerator[Output, None]:
        """Choice `index`'s outputs, Finished last. Until something was `sent`, errors before
        the first output (context too long, engine failure) stay clean HTTP errors; after, any
        failure is an ApiError the stream can render. Closing this closes the engine stream,
        which stops the engine at its next token whatever happened (done, error, cancelled).
        `on_prompt` hears the prompt's token count before the first output."""
        app = self.request.app
        metrics = app[appkeys.METRICS]
        started = time.monotonic()
        sampling = choice_sampling(self.sampling, index)
        outputs = app[appkeys.ENGINE].stream(self.prompt, sampling, on_prompt)
        param = self.answer.prompt_param
        try:
            if sent:
                item = await _next_output(self.request, outputs, param)
            else:
                item = await _first_output(self.request, outputs, param)
            first_at = time.monotonic()  # the end of the prompt phase
            while not isinstance(item, Finished):
                yield item
                item = await _next_output(self.request, outputs, param)
            done = time.monotonic()
            metrics.observe_generation(
                prompt_tokens=item.prompt_tokens,
                completion_tokens=item.completion_tokens,
                cached_tokens=item.cached_tokens,
                prompt_s=first_at - started,
                generation_s=done - first_at,
            )
            if self.tally is not None:
                self.tally.choice(item, started, first_at, done)
            yield item
        finally:
            if isinstance(outputs, AsyncGenerator):
                await outputs.aclose()


async def _collect(generation: _Generation) -> web.StreamResponse:
    choices: list[Choice] = []
    for index in range(generation.n):
        parts: list[str] = []
        entries: list[TokenLogprob] = []
        async with aclosing(generation.outputs(index, sent=False)) as outputs:
            async for item in outputs:
                if isinstance(item, Finished):
                    choices.append(Choice("".join(parts), item, entries))
                elif isinstance(item, Logprobs):
                    entries.extend(item.entries)
                else:
                    parts.append(item)
    body = orjson.dumps(generation.answer.whole(choices))
    return web.Response(body=body, content_type=JSON)


async def _send_stream(generation: _Generation) -> web.StreamResponse:
    response = web.StreamResponse(headers=sse.HEADERS)
    # A metered stream tells the router its prompt's size before the first chunk.
    metered = sse.USAGE_TRAILER_HEADER in generation.request.headers
    finished: list[Finished] = []
    try:
        try:
            for index in range(generation.n):
                sent = response.prepared
                on_prompt = _prompt_header(response) if metered and not sent else None
                async with aclosing(
                    generation.outputs(index, sent=sent, on_prompt=on_prompt)
                ) as outputs:
                    first = await anext(outputs)
                    if not sent:
                        await response.prepare(generation.request)
                    choice = generation.answer.choice(index)
                    finished.append(await _send_choice(response, choice, first, outputs))
        except ApiError as exc:
            if not response.prepared:
                raise
            if generation.tally is not None:
                generation.tally.ended = Outcome.ERROR
            await response.write(sse.error_event(exc))
        else:
            await response.write(generation.answer.end(finished))
        await response.write_eof()
    except ConnectionResetError:
        # The client left between writes; closing the outputs stopped the engine.
        logger.debug("client disconnected mid-stream")
        if generation.tally is not None:
            generation.tally.ended = Outcome.CANCELLED
    return response


def _prompt_header(response: web.StreamResponse) -> OnPrompt:
    def on_prompt(tokens: int) -> None:
        if not response.prepared:
            response.headers[sse.PROMPT_TOKENS_HEADER] = str(tokens)

    return on_prompt


async def _send_choice(
    response: web.StreamResponse, choice: ChoiceStream, first: Output, rest: Outputs
) -> Finished:
    opening = choice.opening()
    if opening:
        await response.write(opening)
    item = first
    pending: list[TokenLogprob] = []  # logprobs of tokens whose text has not gone out yet
    while not isinstance(item, Finished):
        if isinstance(item, Logprobs):
            pending.extend(item.entries)
        else:
            frames = choice.feed(item, pending)
            pending = []
            if frames:
                await response.write(frames)
        item = await anext(rest)
    await response.write(choice.finish(item, pending))
    return item


async def _first_output(request: web.Request, outputs: Outputs, prompt_param: str) -> Output:
    try:
        return await anext(outputs)
    except StopAsyncIteration:
        raise RuntimeError("engine stream ended without Finished") from None
    except EngineError as exc:
        raise engine_api_error(exc, prompt_param) from None
    except Exception:
        request.app[appkeys.METRICS].engine_errors.inc()
        raise


async def _next_output(request: web.Request, outputs: Outputs, prompt_param: str) -> Output:
    """The next engine output; an engine failure becomes an ApiError the caller can render."""
    try:
        return await anext(outputs)
    except StopAsyncIteration:
        logger.error("engine stream ended without Finished")
    except EngineError as exc:
        raise engine_api_error(exc, prompt_param) from None
    except Exception:
        logger.exception("engine failed mid-generation")
    request.app[appkeys.METRICS].engine_errors.inc()
    raise ApiError("The server had an error while processing your request.")
