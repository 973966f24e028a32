"""Tool calls through the router with the official openai SDK, on a real SmolLM2 worker of each
llama engine (tests/integration/conftest.py: auth on, path-based and DNS-based): `required`, a
named function, `auto`, a streamed call assembled by the SDK's stream helper, a tool result fed
back, and bad tool requests.
SmolLM2-135M picks silly values: the tests check structure and schema validity, not wisdom."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolMessageParam,
    ChatCompletionToolParam,
)
from pydantic import BaseModel

from tests.processes import MODEL_ID

pytest.importorskip("llama_cpp", reason="the real stack needs llama-cpp-python")
pytestmark = pytest.mark.llama

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
SCHEMAS: dict[str, dict[str, Any]] = {"get_weather": WEATHER, "get_time": TIME}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name.replace('_', ' ')} somewhere",
            "parameters": schema,
        },
    }
    for name, schema in SCHEMAS.items()
]
ASK: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris?"},
]


# The same processes as the structured-output tests: redis, one worker per engine, a router.


class GetWeather(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    calls = message.tool_calls or []
    assert all(isinstance(call, ChatCompletionMessageFunctionToolCall) for call in calls)
    return [call for call in calls if isinstance(call, ChatCompletionMessageFunctionToolCall)]


def assert_valid_call(name: str, arguments: str, call_id: str) -> None:
    assert call_id.startswith("call_")
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_required_answers_with_a_schema_valid_call(client: openai.OpenAI) -> None:
    """One call (greedy, the tiny model would repeat parallel calls up to max_tokens)."""
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=200,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    for call in function_calls(choice.message):
        assert call.type == "function"
        assert_valid_call(call.function.name, call.function.arguments, call.id)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampled_parallel_calls_are_each_complete_and_valid(
    client: openai.OpenAI, seed: int
) -> None:
    """Sampled, the tiny model may call on until max_tokens ("length"); a call cut short is
    dropped, never returned half-formed."""
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=TOOLS, tool_choice="required", seed=seed, max_tokens=120
    )
    choice = completion.choices[0]
    assert choice.finish_reason in ("tool_calls", "length")
    assert choice.message.content is None
    assert choice.message.tool_calls
    for call in function_calls(choice.message):
        assert_valid_call(call.function.name, call.function.arguments, call.id)


@pytest.mark.parametrize("url", ["path-based", "dns-based"])
def test_a_named_function_is_the_one_called_once(
    client: openai.OpenAI, dns_client: openai.OpenAI, url: str
) -> None:
    completion = (client if url == "path-based" else dns_client).chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=200,
    )
    calls = function_calls(completion.choices[0].message)
    assert len(calls) == 1
    assert calls[0].function.name == "get_time"
    assert_valid_call("get_time", calls[0].function.arguments, calls[0].id)


def test_auto_answers_in_text_or_in_valid_calls(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, tools=TOOLS, temperature=0, max_tokens=100
    )
    choice = completion.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in function_calls(choice.message):
            assert call.function.name in SCHEMAS
            json.loads(call.function.arguments)
    else:
        assert choice.finish_reason in ("stop", "length")
        assert choice.message.content


def test_a_streamed_call_is_assembled_by_the_sdk(client: openai.OpenAI) -> None:
    """A strict tool from a Pydantic model: the SDK parses its arguments into the model."""
    with client.chat.completions.stream(
        model=MODEL_ID,
        messages=ASK,
        tools=[openai.pydantic_function_tool(GetWeather, name="get_weather")],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=200,
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in events
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert_valid_call("get_weather", call.function.arguments, call.id)
    assert isinstance(call.function.parsed_arguments, GetWeather)
    assert call.function.parsed_arguments == GetWeather.model_validate_json(call.function.arguments)


def test_a_tool_result_fed_back_is_answered_in_text(client: openai.OpenAI) -> None:
    # Greedy: a sampled call can ramble inside a string argument until max_tokens cuts it.
    first = client.chat.completions.create(
        model=MODEL_ID,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=200,
        temperature=0,
    )
    message = first.choices[0].message
    assert message.tool_calls
    results: list[ChatCompletionToolMessageParam] = [
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}
        for call in message.tool_calls
    ]
    assistant: Any = message.model_dump(exclude_none=True)  # the SDK's own echo of the turn
    history: list[ChatCompletionMessageParam] = [*ASK, assistant, *results]
    second = client.chat.completions.create(
        model=MODEL_ID, messages=history, tools=TOOLS, tool_choice="none", max_tokens=40
    )
    assert second.choices[0].message.content
    assert not second.choices[0].message.tool_calls


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        (
            {
                "tool_choice": "required",
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "count",
                            "parameters": {"type": "integer", "minimum": 1},
                        },
                    }
                ],
            },
            "tools",
        ),
    ],
    ids=["unknown-function", "unknown-choice", "unenforceable-parameters"],
)
def test_a_bad_tool_request_is_a_400_naming_the_field(
    client: openai.OpenAI, fields: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_ID,
            messages=ASK,
            tools=TOOLS,
            max_tokens=5,
            extra_body=fields,
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == param


def test_a_tool_message_answering_no_call_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_ID,
            messages=[*ASK, {"role": "tool", "tool_call_id": "call_x", "content": "21"}],
            max_tokens=5,
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "messages[2].tool_call_id"
