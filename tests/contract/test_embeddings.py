"""contract.embeddings: the request, its refusals, and the response's two encodings."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from contract.embeddings import (
    EmbeddingsRequest,
    check_dimensions,
    decode_base64,
    embeddings_request_from_dict,
    embeddings_response,
    encode,
    parse_embeddings_request,
)
from contract.errors import InvalidRequest


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "e", "input": "hello"} | fields


def refused(data: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        embeddings_request_from_dict(data)
    return caught.value


def test_a_string_or_strings() -> None:
    assert parse_embeddings_request(orjson.dumps(body())) == EmbeddingsRequest("e", ("hello",))
    request = embeddings_request_from_dict(
        body(input=["a", "b"], encoding_format="base64", dimensions=8, user="u")
    )
    assert request == EmbeddingsRequest("e", ("a", "b"), "base64", 8)
    assert not request.stream


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": None}, "input"),
        ({"input": []}, "input"),
        ({"input": [""]}, "input"),
        ({"input": [1, 2]}, "input"),
        ({"input": [[1, 2]]}, "input"),
        ({"encoding_format": "int8"}, "encoding_format"),
        ({"dimensions": 0}, "dimensions"),
        ({"dimensions": "8"}, "dimensions"),
        ({"user": 5}, "user"),
        ({"model": ""}, "model"),
    ],
)
def test_refusals_name_their_param(fields: dict[str, Any], param: str) -> None:
    assert refused(body(**fields)).param == param


def test_dimensions_must_be_the_models() -> None:
    check_dimensions(EmbeddingsRequest("e", ("a",)), 576)
    check_dimensions(EmbeddingsRequest("e", ("a",), dimensions=576), 576)
    with pytest.raises(InvalidRequest) as caught:
        check_dimensions(EmbeddingsRequest("e", ("a",), dimensions=64), 576)
    assert caught.value.param == "dimensions"


def test_base64_is_float32_little_endian() -> None:
    vector = [0.5, -1.25, 3.0]
    encoded = encode(vector, "base64")
    assert encoded == "AAAAPwAAoL8AAEBA"
    assert isinstance(encoded, str) and decode_base64(encoded) == vector
    assert encode(vector, "float") == vector


def test_response_shape() -> None:
    response = embeddings_response("e", [[1.0], [2.0]], "float", 5)
    assert response == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [1.0]},
            {"object": "embedding", "index": 1, "embedding": [2.0]},
        ],
        "model": "e",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }
