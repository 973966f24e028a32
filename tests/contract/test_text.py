"""contract.text: the legacy completions body, and each refusal naming its param."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from contract.errors import InvalidRequest
from contract.text import TextRequest, parse_text_request, text_request_from_dict
from contract.wire import SamplingParams


def text(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "Once upon"} | fields


def refused(data: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        text_request_from_dict(data)
    assert caught.value.status == 400
    return caught.value


def test_minimal_request_gets_the_defaults() -> None:
    assert parse_text_request(orjson.dumps(text())) == TextRequest(model="m", prompt="Once upon")


def test_sampling_fields_land_in_sampling_params() -> None:
    request = text_request_from_dict(
        text(
            max_tokens=7,
            temperature=0,
            top_p=0.5,
            stop=["\n", ""],
            seed=3,
            presence_penalty=1,
            frequency_penalty=-1.5,
            user="u",
            n=1,
            best_of=1,
            echo=False,
            logprobs=None,
        )
    )
    assert request.sampling == SamplingParams(
        max_tokens=7,
        temperature=0.0,
        top_p=0.5,
        stop=("\n",),
        seed=3,
        presence_penalty=1.0,
        frequency_penalty=-1.5,
    )


def test_a_list_of_one_prompt_is_that_prompt() -> None:
    assert text_request_from_dict(text(prompt=["abc"])).prompt == "abc"


def test_stream_options_need_stream() -> None:
    request = text_request_from_dict(text(stream=True, stream_options={"include_usage": True}))
    assert request.stream and request.include_usage
    assert refused(text(stream_options={"include_usage": True})).param == "stream_options"
    bad = refused(text(stream=True, stream_options={"include_usage": 1}))
    assert bad.param == "stream_options.include_usage"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2]]}, "prompt"),
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"n": 2}, "n"),
        ({"best_of": 2}, "best_of"),
        ({"echo": True}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 2}, "logprobs"),
        ({"logprobs": 0}, "logprobs"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"seed": 2**64}, "seed"),
    ],
)
def test_refusals_name_their_param(fields: dict[str, Any], param: str) -> None:
    assert refused(text(**fields)).param == param


def test_a_body_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        parse_text_request(b"[1]")
