"""Requests with a response_format that SmolLM2-135M answers well within 200 tokens, shared by
the engine tests."""

from __future__ import annotations

from typing import Any

import orjson

from contract.formats import ResponseFormat, parse_response_format
from contract.wire import Message

PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
    "required": ["name", "age", "address"],
}
PERSON = parse_response_format(
    {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}}
)
JSON_OBJECT = ResponseFormat("json_object")
UNSUPPORTED = parse_response_format(
    {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": {"type": "integer", "minimum": 1}},
    }
)
SYSTEM = Message("system", "You reply in JSON only.")
ASK_PERSON = (SYSTEM, Message("user", "Describe a person named Ann, 31, who lives in Paris."))
ASK_CAPITAL = (SYSTEM, Message("user", "Give the capital of France as JSON with a key 'capital'."))


def check_person(text: str) -> dict[str, Any]:
    """The document, after checking it against PERSON_SCHEMA (keys in the schema's order)."""
    person: dict[str, Any] = orjson.loads(text)
    assert list(person) == ["name", "age", "address"]
    assert isinstance(person["name"], str)
    assert isinstance(person["age"], int)
    assert list(person["address"]) == ["city"]
    assert isinstance(person["address"]["city"], str)
    return person
