"""The worker's endpoints besides chat: legacy text completions and embeddings.

`POST /v1/completions` runs the raw prompt, without the chat template, through the same engine
and generation as chat (worker.generation) and answers in the text-completion shape
(worker.completions.TextAnswer). `POST /v1/embeddings` is served by a worker whose engine embeds
(worker.embedding_engine, started with `--embedding on`); a generating worker answers 404 for
embeddings and an embedding worker for completions, as OpenAI does for a model that does not
serve the endpoint.
"""

from __future__ import annotations

from aiohttp import web

from contract import sse
from contract.embeddings import check_dimensions, embeddings_response, parse_embeddings_request
from contract.errors import ContextLengthExceeded, ModelNotFound, NotFound
from contract.text import parse_text_request
from worker import appkeys
from worker.completions import TextAnswer
from worker.embedding_engine import Embedder
from worker.engine import EngineError, PromptTooLong
from worker.generation import engine_api_error, generate, held_slot
from worker.handlers import json_response


def _not_served(model: str, what: str) -> NotFound:
    return NotFound(
        f"The model `{model}` does not serve {what} on this server.",
        param="model",
        code="model_not_found",
    )


async def embeddings(request: web.Request) -> web.Response:
    app = request.app
    model = app[appkeys.CONFIG].model_id
    parsed = parse_embeddings_request(await request.read())
    if parsed.model != model:
        raise ModelNotFound(parsed.model)
    engine = app[appkeys.ENGINE]
    if not isinstance(engine, Embedder):
        raise _not_served(model, "embeddings")
    check_dimensions(parsed, engine.dimensions)
    try:
        async with held_slot(request):
            embedded = await engine.embed(parsed.inputs)
    except PromptTooLong as exc:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {exc.n_ctx} tokens, however you requested "
            f"{exc.prompt_tokens} tokens in one input. Please reduce your input.",
            param="input",
        ) from None
    except EngineError as exc:
        raise engine_api_error(exc) from None
    app[appkeys.METRICS].prompt_tokens.inc(embedded.prompt_tokens)
    body = embeddings_response(
        model, embedded.vectors, parsed.encoding_format, embedded.prompt_tokens
    )
    return json_response(body)


async def completions(request: web.Request) -> web.StreamResponse:
    model = request.app[appkeys.CONFIG].model_id
    parsed = parse_text_request(await request.read())
    if parsed.model != model:
        raise ModelNotFound(parsed.model)
    if isinstance(request.app[appkeys.ENGINE], Embedder):
        raise _not_served(model, "text completions")
    answer = TextAnswer(
        model,
        include_usage=parsed.include_usage,
        usage_trailer=sse.USAGE_TRAILER_HEADER in request.headers,
    )
    return await generate(request, parsed.prompt, parsed.sampling, parsed.stream, answer)


def add_text_routes(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/completions", completions)
