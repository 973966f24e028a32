"""response_format: the shapes accepted, and every malformed one refused naming the parameter."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from contract.errors import InvalidRequest
from contract.formats import ResponseFormat, parse_response_format
from contract.wire import chat_request_from_dict

SCHEMA = {
    "type": "object",
    "properties": {"b": {"type": "integer"}, "a": {"type": "string"}},
    "required": ["b", "a"],
}


def json_schema(**spec: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": spec}


def test_text_and_absent_mean_free_text() -> None:
    assert parse_response_format(None) is None
    assert parse_response_format({"type": "text"}) is None


def test_json_object() -> None:
    assert parse_response_format({"type": "json_object"}) == ResponseFormat("json_object")


def test_json_schema_keeps_the_schema_in_the_clients_key_order() -> None:
    fmt = parse_response_format(json_schema(name="thing", schema=SCHEMA, strict=True))
    assert fmt is not None
    assert (fmt.kind, fmt.name, fmt.strict) == ("json_schema", "thing", True)
    assert fmt.schema is not None
    assert orjson.loads(fmt.schema) == SCHEMA
    assert list(orjson.loads(fmt.schema)["properties"]) == ["b", "a"]  # answer order


def test_equal_schemas_are_equal_hashable_values() -> None:
    one = parse_response_format(json_schema(name="x", schema=SCHEMA))
    two = parse_response_format(json_schema(name="x", schema=dict(SCHEMA)))
    assert one == two
    assert hash(one) == hash(two)


def test_strict_defaults_to_false() -> None:
    fmt = parse_response_format(json_schema(name="x", schema={}))
    assert fmt is not None
    assert fmt.strict is False
    assert fmt.schema == "{}"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("json_object", "must be an object"),
        ([], "must be an object"),
        ({}, "response_format.type"),
        ({"type": "yaml"}, "'yaml'"),
        ({"type": 3}, "int"),
        ({"type": "json_schema"}, "Missing required parameter: 'response_format.json_schema'"),
        ({"type": "json_schema", "json_schema": "x"}, "must be an object"),
        (json_schema(schema=SCHEMA), "json_schema.name"),
        (json_schema(name="a b", schema=SCHEMA), "json_schema.name"),
        (json_schema(name="x" * 65, schema=SCHEMA), "json_schema.name"),
        (json_schema(name="", schema=SCHEMA), "json_schema.name"),
        (json_schema(name=7, schema=SCHEMA), "json_schema.name"),
        (json_schema(name="x"), "json_schema.schema"),
        (json_schema(name="x", schema=[SCHEMA]), "json_schema.schema"),
        (json_schema(name="x", schema=SCHEMA, strict="yes"), "json_schema.strict"),
    ],
)
def test_malformed_values_are_refused_naming_response_format(raw: Any, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_response_format(raw)
    assert caught.value.param == "response_format"
    assert caught.value.status == 400
    assert words in caught.value.message


def test_the_longest_allowed_name() -> None:
    assert parse_response_format(json_schema(name="a-Z_9" * 12 + "abcd", schema={}))


def test_a_chat_request_carries_its_format_in_the_sampling_params() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat_request_from_dict(base).sampling.response_format is None
    chat = chat_request_from_dict({**base, "response_format": {"type": "json_object"}})
    assert chat.sampling.response_format == ResponseFormat("json_object")
    with pytest.raises(InvalidRequest) as caught:
        chat_request_from_dict({**base, "response_format": {"type": "xml"}})
    assert caught.value.param == "response_format"
