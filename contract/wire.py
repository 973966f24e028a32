"""The OpenAI chat-completions request (parsing, validation) and the model object.

Validation follows OpenAI's bounds and error shape (400 invalid_request_error with `param`), so
a bad request is refused the same way whether it reaches the router or a worker directly.
Fields this service cannot honour are refused (contract.conformance); unknown keys are ignored,
as OpenAI-compatible servers commonly do. Pure: no aiohttp, no redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from contract.conformance import refuse_unsupported
from contract.errors import InvalidRequest
from contract.fields import include_usage, require_model, stop_sequences
from contract.formats import ResponseFormat, parse_response_format
from contract.tools import (
    ToolCall,
    ToolCallFormat,
    Tools,
    parse_tool_calls,
    parse_tools,
    tool_call_id,
)

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_PLAIN_ROLES = frozenset({"system", "developer", "user"})  # roles with nothing but content
# Content parts OpenAI defines for images, sound and files: well formed, but not for a text model.
MEDIA_PARTS = frozenset({"image_url", "input_audio", "file"})
MAX_STOP = 4
MAX_TOKENS_LIMIT = 2**31 - 1
MAX_LOGIT_BIAS = 300
MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 128  # OpenAI's bound on `n`
SEED_LIMIT = 2**63


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str | None = None  # the call a tool message answers


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to generate: what an engine takes besides the messages."""

    max_tokens: int | None = None  # None: until end of generation or the context is full
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # None: free text; a ToolCallFormat when tool calls are forced (grammar-constrained alike).
    response_format: ResponseFormat | ToolCallFormat | None = None
    tools: Tools | None = None  # offered to the model; None: no tool calls
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100])
    top_logprobs: int | None = None  # None: no logprobs; else alternatives per token (0..20)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: tuple[Message, ...]
    stream: bool = False
    include_usage: bool = False
    sampling: SamplingParams = SamplingParams()
    n: int = 1  # choices to generate, one after another


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


def parse_chat_request(body: bytes) -> ChatRequest:
    return chat_request_from_dict(parse_body(body))


def chat_request_from_dict(data: dict[str, Any]) -> ChatRequest:
    model = require_model(data)
    refuse_unsupported(data)

    stream = _optional_bool(data, "stream") or False
    usage = include_usage(data.get("stream_options"), stream)

    max_tokens = _optional_int(data, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
    legacy_max = _optional_int(data, "max_tokens", 1, MAX_TOKENS_LIMIT)
    if max_tokens is None:
        max_tokens = legacy_max

    n = _optional_int(data, "n", 1, MAX_CHOICES) or 1
    temperature = _optional_number(data, "temperature", 0.0, 2.0)
    top_p = _optional_number(data, "top_p", 0.0, 1.0)
    presence = _optional_number(data, "presence_penalty", -2.0, 2.0)
    frequency = _optional_number(data, "frequency_penalty", -2.0, 2.0)
    seed = _optional_int(data, "seed", -SEED_LIMIT, SEED_LIMIT - 1)
    messages = _messages(data.get("messages"))
    tools = parse_tools(data)
    response_format = parse_response_format(data.get("response_format"))
    top_logprobs = _top_logprobs(data)

    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=usage,
        sampling=SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            stop=stop_sequences(data.get("stop"), MAX_STOP),
            seed=seed,
            presence_penalty=presence or 0.0,
            frequency_penalty=frequency or 0.0,
            response_format=tools.format if tools and tools.format else response_format,
            tools=tools,
            logit_bias=_logit_bias(data.get("logit_bias")),
            top_logprobs=top_logprobs,
        ),
        n=n,
    )


def _top_logprobs(data: dict[str, Any]) -> int | None:
    """None unless `logprobs` is true; then `top_logprobs` (0 when absent). A non-zero
    `top_logprobs` without `logprobs: true` is refused, as OpenAI does."""
    logprobs = _optional_bool(data, "logprobs") or False
    top = _optional_int(data, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if not logprobs:
        if top:
            raise InvalidRequest(
                "Invalid value for 'top_logprobs': 'logprobs' must be set to true when "
                "'top_logprobs' is used.",
                param="top_logprobs",
            )
        return None
    return top or 0


def _logit_bias(raw: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's map of token ids (string keys) to biases in [-100, 100], in key order."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise InvalidRequest(
            "Invalid type for 'logit_bias': expected an object.", param="logit_bias"
        )
    if len(raw) > MAX_LOGIT_BIAS:
        raise InvalidRequest(
            f"Invalid 'logit_bias': too many properties. Expected an object with at most "
            f"{MAX_LOGIT_BIAS} properties, but got an object with {len(raw)} properties instead.",
            param="logit_bias",
        )
    out = []
    for key, value in raw.items():
        if not (key.isascii() and key.isdigit()):
            raise InvalidRequest(
                f"Invalid key in 'logit_bias': {key}. You should only be submitting "
                "non-negative integers.",
                param="logit_bias",
            )
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not -100 <= value <= 100
        ):
            raise InvalidRequest(
                f"Invalid value for 'logit_bias' key {key}: {value!r}. The bias must be a "
                "number between -100 and 100.",
                param="logit_bias",
            )
        out.append((int(key), float(value)))
    return tuple(out)


def _messages(raw: Any) -> tuple[Message, ...]:
    if raw is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(raw, list):
        raise InvalidRequest("'messages' must be an array.", param="messages")
    if not raw:
        raise InvalidRequest(
            "'messages' must contain at least one message.", param="messages", code="empty_array"
        )
    out = []
    calls: set[str] = set()  # ids of the calls made so far, which tool messages answer
    for i, item in enumerate(raw):
        if isinstance(item, dict):  # the common message, text from a user or system: as below
            role, content = item.get("role"), item.get("content")
            if isinstance(role, str) and role in _PLAIN_ROLES and isinstance(content, str):
                out.append(Message(role, content))
                continue
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"Invalid value for '{where}.role': expected one of 'system', 'developer', "
                "'user', 'assistant', 'tool'.",
                param=f"{where}.role",
            )
        content = _content(item.get("content"), role, where)
        if role == "assistant":
            made = parse_tool_calls(item.get("tool_calls"), where)
            calls.update(call.id for call in made)
            out.append(Message(role, content, tool_calls=made))
        elif role == "tool":
            out.append(
                Message(
                    role, content, tool_call_id=tool_call_id(item.get("tool_call_id"), where, calls)
                )
            )
        else:
            out.append(Message(role, content))
    return tuple(out)


def _content(raw: Any, role: str, where: str) -> str:
    if isinstance(raw, str):
        return raw
    if raw is None:
        if role == "assistant":
            return ""
        raise InvalidRequest(
            f"Missing required parameter: '{where}.content'.", param=f"{where}.content"
        )
    if not isinstance(raw, list):
        raise InvalidRequest(
            f"'{where}.content' must be a string or an array of content parts.",
            param=f"{where}.content",
        )
    texts = []
    for j, part in enumerate(raw):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise InvalidRequest(f"'{at}' must be an object.", param=at)
        kind = part.get("type")
        if isinstance(kind, str) and kind in MEDIA_PARTS:
            raise InvalidRequest(
                f"This model takes text only: '{at}' is of type {kind!r}, which it cannot read.",
                param=f"{at}.type",
                code="unsupported_content_type",
            )
        if kind != "text":
            raise InvalidRequest(
                f"Invalid value for '{at}.type': only 'text' content parts are supported.",
                param=f"{at}.type",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"'{at}.text' must be a string.", param=f"{at}.text")
        texts.append(text)
    return "".join(texts)


def _optional_bool(data: dict[str, Any], key: str, prefix: str = "") -> bool | None:
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidRequest(
        f"Invalid type for '{prefix}{key}': expected a boolean.", param=prefix + key
    )


def _optional_int(data: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"Invalid type for '{key}': expected an integer.", param=key)
    if not low <= value <= high:
        raise InvalidRequest(
            f"Invalid '{key}': integer must be between {low} and {high}, got {value}.",
            param=key,
            code="integer_out_of_range" if value > high else "integer_below_min_value",
        )
    return value


def _optional_number(data: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRequest(f"Invalid type for '{key}': expected a number.", param=key)
    number = float(value)
    if not low <= number <= high:  # also rejects NaN
        code = "decimal_above_max_value" if number > high else "decimal_below_min_value"
        raise InvalidRequest(
            f"Invalid '{key}': decimal must be between {low:g} and {high:g}, got {value}.",
            param=key,
            code=code,
        )
    return number


OWNED_BY: Final = "xerotier"


def model_object(model: str, created_s: int) -> dict[str, Any]:
    """OpenAI's model object, as `GET /v1/models` lists it on both sides."""
    return {"id": model, "object": "model", "created": created_s, "owned_by": OWNED_BY}
