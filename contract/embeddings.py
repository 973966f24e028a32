"""The OpenAI embeddings request (`POST /v1/embeddings`) and the response it gets.

`input` is a string or an array of strings (token arrays are refused); `encoding_format` is
"float" (default) or "base64" (float32 little-endian, as OpenAI encodes it); `dimensions` is
accepted only when it equals the model's own size, which the worker knows and checks
(`check_dimensions`). Pure: no aiohttp, no redis.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from contract.errors import InvalidRequest
from contract.fields import integer, require_model
from contract.wire import parse_body

EncodingFormat = Literal["float", "base64"]
MAX_INPUTS: Final = 2048


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    model: str
    inputs: tuple[str, ...]
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None
    stream: bool = False  # never: what the router's dispatch reads of every request


def parse_embeddings_request(body: bytes) -> EmbeddingsRequest:
    return embeddings_request_from_dict(parse_body(body))


def embeddings_request_from_dict(data: dict[str, Any]) -> EmbeddingsRequest:
    model = require_model(data)
    fmt: EncodingFormat = "float"
    if data.get("encoding_format") == "base64":
        fmt = "base64"
    elif data.get("encoding_format") not in (None, "float"):
        raise InvalidRequest(
            "Invalid value for 'encoding_format': expected 'float' or 'base64'.",
            param="encoding_format",
        )
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("Invalid type for 'user': expected a string.", param="user")
    return EmbeddingsRequest(
        model=model,
        inputs=_inputs(data.get("input")),
        encoding_format=fmt,
        dimensions=integer(data, "dimensions", 1, 1 << 20),
    )


def _inputs(raw: Any) -> tuple[str, ...]:
    if raw is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(
            "'input' must be a string or an array of strings; token arrays are not supported.",
            param="input",
        )
    if not texts or len(texts) > MAX_INPUTS:
        raise InvalidRequest(
            f"'input' must hold 1 to {MAX_INPUTS} strings, got {len(texts)}.", param="input"
        )
    if not all(texts):
        raise InvalidRequest("'input' must not contain empty strings.", param="input")
    return tuple(texts)


def check_dimensions(request: EmbeddingsRequest, model_dimensions: int) -> None:
    """Refuse a `dimensions` other than the model's: this service does not shorten vectors."""
    if request.dimensions is not None and request.dimensions != model_dimensions:
        raise InvalidRequest(
            f"This model's embeddings have {model_dimensions} dimensions; 'dimensions' "
            f"{request.dimensions} is not supported.",
            param="dimensions",
        )


def encode(vector: Sequence[float], fmt: EncodingFormat) -> list[float] | str:
    if fmt == "float":
        return list(vector)
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def decode_base64(text: str) -> list[float]:
    """The floats of a base64 embedding, as a client decodes it."""
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def embeddings_response(
    model: str, vectors: Sequence[Sequence[float]], fmt: EncodingFormat, prompt_tokens: int
) -> dict[str, Any]:
    """OpenAI's embeddings list object."""
    data = [
        {"object": "embedding", "index": i, "embedding": encode(vector, fmt)}
        for i, vector in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
