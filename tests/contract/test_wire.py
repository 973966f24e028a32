"""contract.wire: what a chat-completions body must hold, and how each refusal names its param."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.errors import InvalidRequest
from contract.wire import (
    MAX_TOKENS_LIMIT,
    ROLES,
    SEED_LIMIT,
    ChatRequest,
    Message,
    SamplingParams,
    chat_request_from_dict,
    model_object,
    parse_chat_request,
)

HELLO = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    """A valid request, with `fields` replacing or adding keys."""
    return {"model": "m", "messages": HELLO} | fields


def sampling_of(**fields: Any) -> SamplingParams:
    return chat_request_from_dict(chat(**fields)).sampling


def refusal(data: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        chat_request_from_dict(data)
    assert caught.value.status == 400
    return caught.value


def test_a_minimal_request_gets_the_defaults() -> None:
    assert chat_request_from_dict(chat()) == ChatRequest(
        model="m",
        messages=(Message("user", "hi"),),
        stream=False,
        include_usage=False,
        sampling=SamplingParams(
            max_tokens=None,
            temperature=1.0,
            top_p=1.0,
            stop=(),
            seed=None,
            presence_penalty=0.0,
            frequency_penalty=0.0,
        ),
    )


def test_every_field_is_carried_and_unknown_keys_are_ignored() -> None:
    request = chat_request_from_dict(
        chat(
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=7,
            temperature=0.5,
            top_p=0.25,
            stop=["a", "b"],
            seed=-3,
            presence_penalty=1.5,
            frequency_penalty=-1.5,
            n=1,
            user="someone",
            vendor_extension={"anything": 1},
        )
    )
    assert (request.stream, request.include_usage, request.sampling.max_tokens) == (True, True, 7)
    assert (request.sampling.temperature, request.sampling.top_p, request.sampling.seed) == (
        0.5,
        0.25,
        -3,
    )
    assert (request.sampling.presence_penalty, request.sampling.frequency_penalty) == (1.5, -1.5)
    assert request.sampling.stop == ("a", "b")


def test_missing_model_and_messages_are_refused_by_name() -> None:
    error = refusal({"messages": HELLO})
    assert (error.param, error.code, error.message) == (
        "model",
        None,
        "you must provide a model parameter",
    )
    error = refusal({"model": "m"})
    assert (error.param, error.code) == ("messages", None)
    assert "Missing required parameter: 'messages'" in error.message


# (fields replacing the valid request's, the refusal's param, its code)
REFUSALS: list[tuple[dict[str, Any], str, str | None]] = [
    ({"model": ""}, "model", None),
    ({"model": 3}, "model", None),
    ({"messages": "hi"}, "messages", None),
    ({"messages": []}, "messages", "empty_array"),
    ({"messages": ["hi"]}, "messages[0]", None),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", None),
    (
        {"messages": [{"role": "tool", "content": "x", "tool_call_id": "call_1"}]},
        "messages[0].tool_call_id",
        None,
    ),
    ({"messages": [{"content": "x"}]}, "messages[0].role", None),
    ({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role", None),
    ({"messages": [*HELLO, {"role": "user"}]}, "messages[1].content", None),
    ({"messages": [{"role": "system", "content": None}]}, "messages[0].content", None),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", None),
    ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content[0]", None),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
        "messages[0].content[0].text",
        None,
    ),
    ({"temperature": -0.1}, "temperature", "decimal_below_min_value"),
    ({"temperature": 2.01}, "temperature", "decimal_above_max_value"),
    ({"temperature": 3}, "temperature", "decimal_above_max_value"),
    ({"temperature": "1"}, "temperature", None),
    ({"temperature": True}, "temperature", None),
    ({"temperature": float("nan")}, "temperature", "decimal_below_min_value"),
    ({"top_p": -0.01}, "top_p", "decimal_below_min_value"),
    ({"top_p": 1.01}, "top_p", "decimal_above_max_value"),
    ({"presence_penalty": -2.01}, "presence_penalty", "decimal_below_min_value"),
    ({"presence_penalty": 2.01}, "presence_penalty", "decimal_above_max_value"),
    ({"frequency_penalty": -2.01}, "frequency_penalty", "decimal_below_min_value"),
    ({"frequency_penalty": 2.01}, "frequency_penalty", "decimal_above_max_value"),
    ({"frequency_penalty": [1]}, "frequency_penalty", None),
    ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ({"max_tokens": MAX_TOKENS_LIMIT + 1}, "max_tokens", "integer_out_of_range"),
    ({"max_tokens": 1.5}, "max_tokens", None),
    ({"max_tokens": "5"}, "max_tokens", None),
    ({"max_tokens": True}, "max_tokens", None),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "integer_below_min_value"),
    # Both are checked, even where max_completion_tokens would win.
    ({"max_completion_tokens": 5, "max_tokens": -1}, "max_tokens", "integer_below_min_value"),
    ({"n": 0}, "n", "integer_below_min_value"),
    ({"n": 129}, "n", "integer_out_of_range"),
    ({"n": "1"}, "n", None),
    ({"seed": SEED_LIMIT}, "seed", "integer_out_of_range"),
    ({"seed": -SEED_LIMIT - 1}, "seed", "integer_below_min_value"),
    ({"seed": 0.5}, "seed", None),
    ({"stop": 5}, "stop", None),
    ({"stop": ["a", 1]}, "stop", None),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
    ({"stream": "yes"}, "stream", None),
    ({"stream_options": {"include_usage": True}}, "stream_options", None),
    ({"stream": False, "stream_options": {}}, "stream_options", None),
    ({"stream": True, "stream_options": "usage"}, "stream_options", None),
    (
        {"stream": True, "stream_options": {"include_usage": "yes"}},
        "stream_options.include_usage",
        None,
    ),
]


@pytest.mark.parametrize(("fields", "param", "code"), REFUSALS)
def test_each_refusal_names_its_param_and_code(
    fields: dict[str, Any], param: str, code: str | None
) -> None:
    error = refusal(chat(**fields))
    assert (error.param, error.code) == (param, code)
    assert error.type == "invalid_request_error"


@pytest.mark.parametrize("kind", ["image_url", "input_audio", "file"])
def test_a_media_content_part_is_refused_by_its_position(kind: str) -> None:
    parts = [{"type": "text", "text": "a"}, {"type": kind, kind: {"url": "x"}}]
    error = refusal(chat(messages=[{"role": "user", "content": parts}]))
    assert (error.param, error.code) == ("messages[0].content[1].type", "unsupported_content_type")
    assert error.message.startswith("This model takes text only:")


@pytest.mark.parametrize("kind", ["video", None, ["text"]])
def test_an_unknown_content_part_is_refused_by_its_position(kind: Any) -> None:
    parts = [{"type": "text", "text": "a"}, {"type": kind}]
    error = refusal(chat(messages=[{"role": "user", "content": parts}]))
    assert error.param == "messages[0].content[1].type"
    assert "only 'text' content parts are supported" in error.message


def test_out_of_range_messages_quote_the_bounds() -> None:
    assert refusal(chat(temperature=2.5)).message == (
        "Invalid 'temperature': decimal must be between 0 and 2, got 2.5."
    )
    assert refusal(chat(max_tokens=0)).message == (
        f"Invalid 'max_tokens': integer must be between 1 and {MAX_TOKENS_LIMIT}, got 0."
    )
    assert "maximum length 4" in refusal(chat(stop=list("abcde"))).message


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [
        ("temperature", 0, 2),
        ("top_p", 0, 1),
        ("presence_penalty", -2, 2),
        ("frequency_penalty", -2, 2),
    ],
)
def test_number_bounds_are_inclusive_and_ints_become_floats(
    field: str, low: int, high: int
) -> None:
    for value in (low, high):
        parsed = getattr(sampling_of(**{field: value}), field)
        assert parsed == value and isinstance(parsed, float)


def test_integer_bounds_are_inclusive() -> None:
    assert sampling_of(max_tokens=1).max_tokens == 1
    assert sampling_of(max_tokens=MAX_TOKENS_LIMIT).max_tokens == MAX_TOKENS_LIMIT
    assert sampling_of(seed=-SEED_LIMIT).seed == -SEED_LIMIT
    assert sampling_of(seed=SEED_LIMIT - 1).seed == SEED_LIMIT - 1
    assert chat_request_from_dict(chat(n=1)).n == 1
    assert chat_request_from_dict(chat(n=128)).n == 128
    assert sampling_of(max_tokens=5.0).max_tokens == 5  # a whole float counts


def test_n_is_carried_and_defaults_to_one() -> None:
    assert chat_request_from_dict(chat()).n == 1
    assert chat_request_from_dict(chat(n=3)).n == 3
    assert chat_request_from_dict(chat(n=2.0)).n == 2


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    both = chat_request_from_dict(chat(max_tokens=10, max_completion_tokens=20))
    assert both.sampling.max_tokens == 20
    assert chat_request_from_dict(chat(max_tokens=10)).sampling.max_tokens == 10
    assert chat_request_from_dict(chat(max_completion_tokens=30)).sampling.max_tokens == 30
    neither = chat_request_from_dict(chat(max_tokens=None, max_completion_tokens=None))
    assert neither.sampling.max_tokens is None


@pytest.mark.parametrize(
    ("stop", "parsed"),
    [
        (None, ()),
        ("", ()),
        ("END", ("END",)),
        ([], ()),
        (["a", "", "b"], ("a", "b")),
        (["a", "b", "c", "d"], ("a", "b", "c", "d")),
    ],
)
def test_stop_is_a_string_or_up_to_four(stop: Any, parsed: tuple[str, ...]) -> None:
    assert chat_request_from_dict(chat(stop=stop)).sampling.stop == parsed


@pytest.mark.parametrize(
    ("fields", "include_usage"),
    [
        ({"stream": True}, False),
        ({"stream": True, "stream_options": None}, False),
        ({"stream": True, "stream_options": {}}, False),
        ({"stream": True, "stream_options": {"include_usage": False}}, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
        ({"stream": False, "stream_options": None}, False),
    ],
)
def test_include_usage_needs_a_stream(fields: dict[str, Any], include_usage: bool) -> None:
    assert chat_request_from_dict(chat(**fields)).include_usage is include_usage


def test_text_parts_are_joined_and_every_role_is_accepted() -> None:
    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages: list[dict[str, Any]] = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    messages += [{"role": role, "content": "x", "tool_call_id": "call_1"} for role in sorted(ROLES)]
    messages.append({"role": "user", "content": parts})
    messages.append({"role": "assistant", "content": None})  # e.g. a turn that only called tools
    request = chat_request_from_dict(chat(messages=messages))
    roles = ["assistant", *sorted(ROLES), "user", "assistant"]
    assert [m.role for m in request.messages] == roles
    assert request.messages[0].tool_calls[0].arguments == "{}"
    assert request.messages[-2].content == "Hello, world"
    assert request.messages[-1].content == ""
    assert {"system", "developer", "user", "assistant", "tool"} == ROLES


@pytest.mark.parametrize("role", [["user"], {"name": "user"}])
def test_an_unhashable_role_is_a_400(role: Any) -> None:
    assert refusal(chat(messages=[{"role": role, "content": "x"}])).param == "messages[0].role"


def test_parse_chat_request_reads_json_bytes() -> None:
    body = orjson.dumps(chat(temperature=0))
    assert parse_chat_request(body) == chat_request_from_dict(chat(temperature=0.0))


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"model": "m",}', b"\xff\xfe"])
def test_a_body_that_is_not_json_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(body)
    assert (caught.value.param, caught.value.code) == (None, None)
    assert caught.value.message.startswith("We could not parse the JSON body of your request.")


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"1", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_chat_request(body)
    assert caught.value.message == "The request body must be a JSON object."


def test_model_object_is_openais_shape() -> None:
    assert model_object("smollm2", 1_700_000_000) == {
        "id": "smollm2",
        "object": "model",
        "created": 1_700_000_000,
        "owned_by": "xerotier",
    }


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_part = st.fixed_dictionaries(
    {}, optional={"type": st.sampled_from(["text", "image_url"]) | _json, "text": _json}
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from([*sorted(ROLES), "critic"]) | _json,
        "content": _json | st.lists(_part, max_size=3),
        "tool_calls": _json,
        "tool_call_id": _json,
    },
)
_fields = (
    "temperature", "top_p", "presence_penalty", "frequency_penalty", "max_tokens",
    "max_completion_tokens", "n", "seed", "stop", "stream", "stream_options",
    "tools", "tool_choice", "parallel_tool_calls",
)  # fmt: skip
chat_shaped = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just("m") | _json,
        "messages": st.lists(_message | _json, max_size=3) | _json,
        **{
            field: _json | st.integers(-3, 3) | st.floats(-3, 3) | st.lists(st.text(), max_size=5)
            for field in _fields
        },
    },
)


@settings(max_examples=300, deadline=None)
@given(data=chat_shaped | st.dictionaries(st.text(max_size=8), _json, max_size=6))
def test_any_json_object_parses_within_bounds_or_is_a_400(data: dict[str, Any]) -> None:
    try:
        request = parse_chat_request(orjson.dumps(data))
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.type == "invalid_request_error"
        return
    assert request.model and request.messages
    assert 0 <= request.sampling.temperature <= 2 and 0 <= request.sampling.top_p <= 1
    assert (
        -2 <= request.sampling.presence_penalty <= 2
        and -2 <= request.sampling.frequency_penalty <= 2
    )
    assert (
        request.sampling.max_tokens is None or 1 <= request.sampling.max_tokens <= MAX_TOKENS_LIMIT
    )
    assert len(request.sampling.stop) <= 4 and all(request.sampling.stop)
    assert request.include_usage <= request.stream


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=64))
def test_any_bytes_parse_or_are_a_400(body: bytes) -> None:
    try:
        parse_chat_request(body)
    except InvalidRequest as exc:
        assert exc.status == 400


def test_plain_messages_parse_as_every_other_message() -> None:
    """Text messages from system, developer and user take a short path: same result, and a bad
    one still gets its error with its index."""
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "s", "name": "ignored"},
            {"role": "developer", "content": [{"type": "text", "text": "d"}]},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": None},
        ],
    }
    request = parse_chat_request(orjson.dumps(body))
    assert request.messages == (
        Message("system", "s"),
        Message("developer", "d"),
        Message("user", "u"),
        Message("assistant", ""),
    )
    body["messages"] = [{"role": "user", "content": "u"}, {"role": "user", "content": 3}]
    with pytest.raises(InvalidRequest) as refused:
        parse_chat_request(orjson.dumps(body))
    assert refused.value.param == "messages[1].content"
