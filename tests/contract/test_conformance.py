"""contract.conformance: every field of OpenAI's chat request is honoured, accepted or refused."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import completion_create_params

from contract.conformance import FIELDS, Support, refuse_unsupported
from contract.errors import InvalidRequest
from contract.wire import chat_request_from_dict

REPO = Path(__file__).resolve().parents[2]
# A value each refused field cannot take here; the neutral values are accepted.
REFUSED_VALUES: dict[str, Any] = {
    "store": True,
    "functions": [{"name": "f", "parameters": {}}],
    "function_call": "auto",
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "prediction": {"type": "content", "content": "x"},
    "reasoning_effort": "low",
    "verbosity": "low",
    "web_search_options": {},
    "moderation": {"enabled": True},
}
NEUTRAL_VALUES: dict[str, list[Any]] = {
    "store": [False, None],
    "functions": [[]],
    "function_call": ["none"],
    "modalities": [["text"]],
}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_the_table_covers_every_field_of_the_sdks_request() -> None:
    sdk = set(typing.get_type_hints(completion_create_params.CompletionCreateParamsBase))
    assert sdk | {"stream"} <= set(FIELDS), sorted(sdk - set(FIELDS))


def test_refused_values_are_named_in_a_400() -> None:
    refused = {name for name, f in FIELDS.items() if f.support is Support.REFUSED}
    assert refused == set(REFUSED_VALUES)
    for name, value in REFUSED_VALUES.items():
        with pytest.raises(InvalidRequest) as caught:
            chat_request_from_dict(chat(**{name: value}))
        error = caught.value
        assert (error.status, error.param, error.code) == (400, name, "unsupported_parameter")
        assert f"'{name}' is not supported" in error.message


@pytest.mark.parametrize(
    ("name", "value"), [(n, v) for n, vs in NEUTRAL_VALUES.items() for v in vs]
)
def test_neutral_values_of_refused_fields_are_accepted(name: str, value: Any) -> None:
    refuse_unsupported(chat(**{name: value}))


def test_accepted_fields_have_no_effect_on_the_request() -> None:
    labels = {
        "user": "u",
        "metadata": {"k": "v"},
        "safety_identifier": "s",
        "prompt_cache_key": "k",
        "prompt_cache_retention": "24h",
        "prompt_cache_options": {},
        "service_tier": "auto",
    }
    accepted = {name for name, f in FIELDS.items() if f.support is Support.ACCEPTED}
    assert accepted == set(labels)
    assert chat_request_from_dict(chat(**labels)) == chat_request_from_dict(chat())


def test_readme_lists_the_table() -> None:
    text = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (honoured|accepted|refused) \|", text, re.M))
    assert rows == {name: f.support.value for name, f in FIELDS.items()}


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
        {"tools": [], "tool_choice": "none", "parallel_tool_calls": False},
    ],
)
def test_tool_fields_are_honoured_not_refused(fields: dict[str, Any]) -> None:
    for name in fields:
        assert FIELDS[name].support is Support.HONOURED
    refuse_unsupported(chat(**fields))
    chat_request_from_dict(chat(**fields))


def test_logprobs_and_logit_bias_are_honoured() -> None:
    for name in ("logprobs", "top_logprobs", "logit_bias"):
        assert FIELDS[name].support is Support.HONOURED
    sampling = chat_request_from_dict(
        chat(logprobs=True, top_logprobs=3, logit_bias={"50256": -100, "7": 2.5})
    ).sampling
    assert sampling.top_logprobs == 3
    assert sampling.logit_bias == ((50256, -100.0), (7, 2.5))
    assert chat_request_from_dict(chat(logprobs=True)).sampling.top_logprobs == 0
    neutral: dict[str, Any]
    for neutral in ({"logprobs": False}, {"top_logprobs": 0}, {"logit_bias": {}}):
        assert chat_request_from_dict(chat(**neutral)) == chat_request_from_dict(chat())


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"top_logprobs": 2}, "top_logprobs", "'logprobs' must be set to true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
        ({"logprobs": "yes"}, "logprobs", "expected a boolean"),
        ({"logit_bias": [1]}, "logit_bias", "expected an object"),
        ({"logit_bias": {"x": 1}}, "logit_bias", "non-negative integers"),
        ({"logit_bias": {"-1": 1}}, "logit_bias", "non-negative integers"),
        ({"logit_bias": {"1": 101}}, "logit_bias", "between -100 and 100"),
        ({"logit_bias": {"1": True}}, "logit_bias", "between -100 and 100"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias", "at most 300"),
    ],
)
def test_bad_logprobs_and_logit_bias_are_400s(
    fields: dict[str, Any], param: str, says: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_request_from_dict(chat(**fields))
    assert (caught.value.status, caught.value.param) == (400, param)
    assert says in caught.value.message
