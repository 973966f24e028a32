"""Structured outputs through the router with the official openai SDK, on a real SmolLM2 worker
of each llama engine, auth on, path-based and DNS-based (tests/integration/conftest.py):
`.parse()` with a nested Pydantic model, `json_object`, a streamed schema assembled by the SDK's
stream helper, and a schema the grammar cannot enforce."""

from __future__ import annotations

import json

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, Field

from tests.processes import (
    MODEL_ID,
)

pytest.importorskip("llama_cpp", reason="the real stack needs llama-cpp-python")
pytestmark = pytest.mark.llama

SYSTEM: ChatCompletionMessageParam = {"role": "system", "content": "You reply in JSON only."}
ASK_PERSON: list[ChatCompletionMessageParam] = [
    SYSTEM,
    {"role": "user", "content": "Describe a person named Ann, 31, who lives in Paris."},
]
ASK_CAPITAL: list[ChatCompletionMessageParam] = [
    SYSTEM,
    {"role": "user", "content": "Give the capital of France as JSON with a key 'capital'."},
]


class Address(BaseModel):
    city: str


class Person(BaseModel):
    name: str
    age: int
    address: Address


class Bounded(BaseModel):
    count: int = Field(ge=1)  # "minimum": no grammar for number bounds


def test_parse_returns_the_nested_pydantic_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL_ID, messages=ASK_PERSON, response_format=Person, temperature=0, max_tokens=200
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.parsed == Person(name="Ann", age=31, address=Address(city="Paris"))


def test_parse_works_on_the_dns_based_url(dns_client: openai.OpenAI) -> None:
    completion = dns_client.chat.completions.parse(
        model=MODEL_ID, messages=ASK_PERSON, response_format=Person, temperature=0, max_tokens=200
    )
    assert completion.choices[0].message.parsed == Person(
        name="Ann", age=31, address=Address(city="Paris")
    )


def test_sampled_parse_still_fits_the_schema(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL_ID, messages=ASK_PERSON, response_format=Person, seed=3, max_tokens=200
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(completion.choices[0].message.parsed, Person)


def test_json_object_answers_json(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK_CAPITAL,
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    assert completion.choices[0].finish_reason == "stop"
    assert json.loads(completion.choices[0].message.content or "") == {"capital": "Paris"}


def test_a_streamed_schema_assembles_into_the_object(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL_ID, messages=ASK_PERSON, response_format=Person, temperature=0, max_tokens=200
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 5  # token by token, not one block
    assert isinstance(final.choices[0].message.parsed, Person)
    assert Person.model_validate_json("".join(deltas)) == final.choices[0].message.parsed


def test_a_schema_the_grammar_cannot_enforce_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.parse(
            model=MODEL_ID, messages=ASK_PERSON, response_format=Bounded, max_tokens=20
        )
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "response_format"
    assert "'minimum'" in body["message"]


def test_a_malformed_response_format_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_ID,
            messages=ASK_CAPITAL,
            response_format={"type": "json_schema", "json_schema": {"name": "noschema"}},
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "response_format"
