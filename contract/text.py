"""The OpenAI legacy text-completions request (`POST /v1/completions`): parsing and validation.

The prompt goes to the model as written, without a chat template. Sampling fields share
contract.wire's `SamplingParams`, so an engine runs a text completion as it runs a chat. What this
service cannot do is refused with 400 naming the field: several prompts or token arrays, `n` or
`best_of` above 1, `echo`, `suffix`, `logprobs`, `logit_bias`. Pure: no aiohttp, no redis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from contract.errors import InvalidRequest
from contract.fields import (
    flag,
    include_usage,
    integer,
    number,
    only,
    require_model,
    stop_sequences,
)
from contract.wire import MAX_STOP, MAX_TOKENS_LIMIT, SEED_LIMIT, SamplingParams, parse_body

OBJECT: Final = "text_completion"


@dataclass(frozen=True, slots=True)
class TextRequest:
    model: str
    prompt: str
    stream: bool = False
    include_usage: bool = False
    sampling: SamplingParams = field(default_factory=SamplingParams)


def parse_text_request(body: bytes) -> TextRequest:
    return text_request_from_dict(parse_body(body))


def text_request_from_dict(data: dict[str, Any]) -> TextRequest:
    model = require_model(data)
    prompt = _prompt(data.get("prompt"))
    _refuse_unsupported(data)
    stream = flag(data, "stream")
    usage = include_usage(data.get("stream_options"), stream)
    return TextRequest(
        model=model,
        prompt=prompt,
        stream=stream,
        include_usage=usage,
        sampling=SamplingParams(
            max_tokens=integer(data, "max_tokens", 1, MAX_TOKENS_LIMIT),
            temperature=number(data, "temperature", 0.0, 2.0, 1.0),
            top_p=number(data, "top_p", 0.0, 1.0, 1.0),
            stop=stop_sequences(data.get("stop"), MAX_STOP),
            seed=integer(data, "seed", -SEED_LIMIT, SEED_LIMIT - 1),
            presence_penalty=number(data, "presence_penalty", -2.0, 2.0, 0.0),
            frequency_penalty=number(data, "frequency_penalty", -2.0, 2.0, 0.0),
        ),
    )


def _prompt(raw: Any) -> str:
    if raw is None:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt")
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]  # the SDK's list form of one prompt
    if isinstance(raw, str):
        if not raw:
            raise InvalidRequest("'prompt' must not be empty.", param="prompt")
        return raw
    raise InvalidRequest(
        "'prompt' must be a string (or an array of one string); several prompts and token "
        "arrays are not supported.",
        param="prompt",
    )


def _refuse_unsupported(data: dict[str, Any]) -> None:
    only(data, "n", (1,), "Only n=1 is supported.")
    only(data, "best_of", (1,), "Only best_of=1 is supported.")
    only(data, "echo", (False,), "'echo' is not supported.")
    only(data, "suffix", ("",), "'suffix' is not supported: this model does no insertion.")
    only(data, "logprobs", (), "'logprobs' is not supported on text completions.")
    only(data, "logit_bias", ({},), "'logit_bias' is not supported on text completions.")
