"""Every field of OpenAI's chat-completions request, and what this service does with it.

A client that sends a field we cannot honour must hear so, never get an answer that silently
ignored it: such a field is refused with 400 `unsupported_parameter` naming it, unless its value is
the neutral one (the default a client may send explicitly, e.g. `"logprobs": false`).
Fields that only label a request (`user`, `metadata`, ...) are accepted and have no effect on the
answer. Keys that are no field of the API at all are ignored, as OpenAI-compatible servers commonly
do (clients put vendor extensions there).

`FIELDS` is the table README.md's conformance section mirrors (a test keeps the two in step).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from contract.errors import InvalidRequest


class Support(enum.StrEnum):
    HONOURED = "honoured"
    ACCEPTED = "accepted"  # no effect on the answer
    REFUSED = "refused"  # 400 unless the value is the neutral one


@dataclass(frozen=True, slots=True)
class Field:
    support: Support
    note: str
    neutral: Callable[[Any], bool] = lambda value: value is None


def _false(value: Any) -> bool:
    return value is None or value is False


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == {}


def _text_only(value: Any) -> bool:
    return value is None or value == ["text"]


def _no_tools(value: Any) -> bool:
    return value is None or value == "none"


_H, _A, _R = Support.HONOURED, Support.ACCEPTED, Support.REFUSED

FIELDS: Final[Mapping[str, Field]] = {
    "model": Field(_H, "the model id; routes the request"),
    "messages": Field(
        _H, "roles system, developer, user, assistant, tool; text content parts joined"
    ),
    "stream": Field(_H, "SSE deltas, `data: [DONE]`"),
    "stream_options": Field(_H, "`include_usage`"),
    "max_completion_tokens": Field(_H, "wins over `max_tokens`"),
    "max_tokens": Field(_H, "legacy spelling of `max_completion_tokens`"),
    "temperature": Field(_H, "0 to 2"),
    "top_p": Field(_H, "0 to 1"),
    "stop": Field(_H, "a string or up to 4"),
    "seed": Field(_H, "repeatable sampling on one worker"),
    "presence_penalty": Field(_H, "-2 to 2"),
    "frequency_penalty": Field(_H, "-2 to 2"),
    "logprobs": Field(_H, "log-softmax of the biased logits, before temperature and top_p"),
    "top_logprobs": Field(_H, "0 to 20; needs `logprobs: true` unless 0"),
    "logit_bias": Field(_H, "token id to -100..100, at most 300; -100 bans a token"),
    "n": Field(_H, "1 to 128, one after another; with `seed`, choice i uses seed + i"),
    "response_format": Field(_H, "`text`, `json_object`, `json_schema` (grammar-constrained)"),
    "tools": Field(_H, "function tools; the model's template or a generic tool prompt"),
    "tool_choice": Field(_H, "`none`, `auto`, `required`, a named function (grammar-constrained)"),
    "parallel_tool_calls": Field(_H, "`false`: at most one call"),
    "user": Field(_A, "a label"),
    "metadata": Field(_A, "a label"),
    "safety_identifier": Field(_A, "a label"),
    "prompt_cache_key": Field(_A, "a label"),
    "prompt_cache_retention": Field(_A, "workers keep their own prompt cache"),
    "prompt_cache_options": Field(_A, "workers keep their own prompt cache"),
    "service_tier": Field(_A, "one tier"),
    "store": Field(_R, "nothing is stored; `false` accepted", _false),
    "functions": Field(_R, "deprecated tools; `[]` accepted", _empty),
    "function_call": Field(_R, "deprecated tool_choice; `none` accepted", _no_tools),
    "modalities": Field(_R, 'text only; `["text"]` accepted', _text_only),
    "audio": Field(_R, "text only"),
    "prediction": Field(_R, "no predicted outputs"),
    "reasoning_effort": Field(_R, "no reasoning models"),
    "verbosity": Field(_R, "no reasoning models"),
    "web_search_options": Field(_R, "no web search"),
    "moderation": Field(_R, "no moderation"),
}


def refuse_unsupported(data: Mapping[str, Any]) -> None:
    """Raise 400 for the first refused field whose value is not its neutral one."""
    for name, value in data.items():
        field = FIELDS.get(name)
        if field is not None and field.support is Support.REFUSED and not field.neutral(value):
            raise InvalidRequest(
                f"Unsupported parameter: '{name}' is not supported by this service ({field.note}).",
                param=name,
                code="unsupported_parameter",
            )
