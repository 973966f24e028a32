"""worker.tools: the tool prompt, and the parser that finds calls in an answer, whole or streamed;
worker.grammar's tool-call grammar."""

from __future__ import annotations

import orjson
import pytest

from contract.tools import Function, ToolCall, ToolCallFormat, Tools
from contract.wire import Message
from worker.engine import UnsupportedFormat
from worker.grammar import tool_calls_gbnf
from worker.tools import (
    ToolCallParser,
    generic_chat,
    native_chat,
    split_answer,
    template_knows_tools,
)

WEATHER = Function(
    "get_weather",
    orjson.dumps({"type": "object", "properties": {"city": {"type": "string"}}}).decode(),
    "the weather",
)
TOOLS = Tools((WEATHER, Function("noop")))
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_a_call_is_parsed_with_a_fresh_id_and_no_content() -> None:
    content, calls = split_answer(CALL, TOOLS)
    assert content is None
    assert len(calls) == 1
    assert calls[0].id.startswith("call_") and calls[0].name == "get_weather"
    assert orjson.loads(calls[0].arguments) == {"city": "Paris"}


def test_parallel_calls_are_all_parsed_unless_parallel_is_off() -> None:
    two = CALL + "\n" + CALL.replace("get_weather", "noop")
    assert [c.name for c in split_answer(two, TOOLS)[1]] == ["get_weather", "noop"]
    single = Tools(TOOLS.functions, parallel=False)
    assert [c.name for c in split_answer(two, single)[1]] == ["get_weather"]


@pytest.mark.parametrize(
    "text",
    [
        "The weather is fine.",
        '<tool_call>\n{"name": "unknown", "arguments": {}}\n</tool_call>',
        "<tool_call>not json</tool_call>",
    ],
)
def test_text_and_bad_calls_stay_content(text: str) -> None:
    assert split_answer(text, TOOLS) == (text, ())


def test_a_call_cut_before_its_closing_tag_still_parses() -> None:
    assert split_answer(CALL.removesuffix("</tool_call>"), TOOLS)[1][0].name == "get_weather"


def test_streamed_text_is_held_only_while_it_may_become_a_call() -> None:
    parser = ToolCallParser(TOOLS)
    assert parser.feed(" <tool") == []
    assert parser.feed("box") == [" <toolbox"]
    assert parser.feed(" more") == [" more"]
    assert not parser.called


def test_a_streamed_call_comes_out_whole_once_closed() -> None:
    parser = ToolCallParser(TOOLS)
    out: list[str | ToolCall] = []
    for i in range(0, len(CALL), 5):
        out += parser.feed(CALL[i : i + 5])
    assert len(out) == 1 and isinstance(out[0], ToolCall)
    assert parser.finish() == [] and parser.called


def test_generic_prompt_lists_tools_and_writes_history_as_text() -> None:
    messages = [
        Message("developer", "Be brief."),
        Message("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"a": 1}'),)),
        Message("tool", "21C", tool_call_id="call_1"),
    ]
    chat = generic_chat(messages, Tools(TOOLS.functions, "required"))
    assert chat[0]["role"] == "system"
    assert chat[0]["content"].startswith("Be brief.\n\n")
    assert '"name":"get_weather"' in chat[0]["content"]
    assert "You must call a function" in chat[0]["content"]
    assert (
        chat[1]["content"]
        == '<tool_call>\n{"name":"get_weather","arguments":{"a":1}}\n</tool_call>'
    )
    assert chat[2] == {"role": "user", "content": "<tool_response>\n21C\n</tool_response>"}
    assert generic_chat([Message("user", "hi")], None) == [{"role": "user", "content": "hi"}]


def test_native_chat_uses_hugging_faces_shapes() -> None:
    messages = [
        Message("assistant", "", tool_calls=(ToolCall("call_1", "noop", "{}"),)),
        Message("tool", "ok", tool_call_id="call_1"),
    ]
    chat, tools = native_chat(messages, TOOLS)
    assert chat[0]["tool_calls"][0]["function"] == {"name": "noop", "arguments": {}}
    assert chat[1]["tool_call_id"] == "call_1"
    assert tools is not None and tools[0]["function"]["description"] == "the weather"
    assert template_knows_tools("{% if tools %}x{% endif %}")
    assert not template_knows_tools("{{ messages }}")


def test_the_call_grammar_names_each_function_and_repeats_only_if_parallel() -> None:
    grammar = tool_calls_gbnf(ToolCallFormat(TOOLS.functions, parallel=True))
    assert grammar.startswith('root ::= "<tool_call>\\n" tool-call-json')
    assert ")*" in grammar.splitlines()[0]
    assert '"\\"get_weather\\""' in grammar and '"\\"noop\\""' in grammar
    single = tool_calls_gbnf(ToolCallFormat((WEATHER,), parallel=False))
    assert ")*" not in single.splitlines()[0] and "noop" not in single


def test_definitions_of_each_function_are_kept_apart() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/A"}},
        "required": ["a"],
        "$defs": {"A": {"type": "object", "properties": {"x": {"type": "integer"}}}},
    }
    fn = Function("f", orjson.dumps(schema).decode())
    grammar = tool_calls_gbnf(ToolCallFormat((fn, Function("g", fn.parameters))))
    assert "f0-A ::=" in grammar and "f1-A ::=" in grammar


def test_parameters_the_grammar_cannot_enforce_are_refused_naming_tools() -> None:
    bounded = Function("f", '{"type":"object","properties":{"n":{"type":"integer","minimum":1}}}')
    with pytest.raises(UnsupportedFormat) as caught:
        tool_calls_gbnf(ToolCallFormat((bounded,)))
    assert caught.value.param == "tools"
    assert "'tools'" in caught.value.message
