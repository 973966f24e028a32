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
    "logprobs": True,
    "top_logprobs": 2,
    "logit_bias": {"50256": -100},
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
    "logprobs": [False],
    "top_logprobs": [0],
    "logit_bias": [{}],
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
