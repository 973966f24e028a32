"""contract.tools: `tools`, `tool_choice`, `parallel_tool_calls` and the tool fields of messages."""

from __future__ import annotations

from typing import Any

import pytest

from contract.errors import InvalidRequest
from contract.tools import EMPTY_OBJECT, Function, ToolCallFormat, parse_tool_calls, parse_tools
from contract.wire import chat_request_from_dict

F = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
G = {"type": "function", "function": {"name": "g", "description": "gee", "strict": True}}


def refusal(data: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse_tools(data)
    assert caught.value.status == 400
    return caught.value


def test_auto_is_the_default_and_forces_nothing() -> None:
    tools = parse_tools({"tools": [F, G]})
    assert tools is not None
    assert (tools.choice, tools.parallel, tools.format) == ("auto", True, None)
    assert tools.functions[1] == Function("g", EMPTY_OBJECT, "gee", strict=True)
    assert tools.function("g") is tools.functions[1] and tools.function("h") is None


def test_required_and_a_named_function_force_calls_through_a_format() -> None:
    required = parse_tools({"tools": [F, G], "tool_choice": "required"})
    assert required is not None and required.format == ToolCallFormat(required.functions, True)
    named = parse_tools(
        {"tools": [F, G], "tool_choice": {"type": "function", "function": {"name": "g"}}}
    )
    assert named is not None and named.format == ToolCallFormat((named.functions[1],), False)
    single = parse_tools({"tools": [F], "tool_choice": "required", "parallel_tool_calls": False})
    assert single is not None and single.format == ToolCallFormat(single.functions, False)


def test_none_or_no_tools_offer_nothing() -> None:
    assert parse_tools({"tools": [F], "tool_choice": "none"}) is None
    assert parse_tools({"tools": []}) is None
    assert parse_tools({}) is None


def test_a_forced_call_rides_in_response_format() -> None:
    request = chat_request_from_dict(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [F],
         "tool_choice": "required"}
    )  # fmt: skip
    assert request.sampling.tools is not None
    assert request.sampling.response_format == request.sampling.tools.format


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"tools": {}}, "tools"),
        ({"tools": [{"type": "custom"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        ({"tools": [F, F]}, "tools[1].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
            "tools[0].function.strict",
        ),
        ({"tools": [F], "tool_choice": "always"}, "tool_choice"),
        ({"tools": [F], "tool_choice": {"type": "function"}}, "tool_choice"),
        (
            {"tools": [F], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [F], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_malformed_tool_fields_are_400s_naming_them(data: dict[str, Any], param: str) -> None:
    assert refusal(data).param == param


def test_tool_calls_of_a_message_are_checked() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert parse_tool_calls([call], "messages[1]")[0].name == "f"
    assert parse_tool_calls(None, "messages[1]") == ()
    bad = {**call, "function": {"name": "f", "arguments": {}}}
    with pytest.raises(InvalidRequest) as caught:
        parse_tool_calls([bad], "messages[1]")
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"
    with pytest.raises(InvalidRequest) as caught:
        parse_tool_calls([{**call, "id": ""}], "messages[1]")
    assert caught.value.param == "messages[1].tool_calls[0].id"
