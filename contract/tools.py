"""Tool calls in a chat request: `tools`, `tool_choice`, `parallel_tool_calls`, and the tool
fields of messages (an assistant's `tool_calls`, a tool message's `tool_call_id`).

Validation follows OpenAI's error shape (400 invalid_request_error naming `param`). The result
is small frozen values: `Tools` says what the model is offered and must do; `ToolCallFormat`,
when calls are forced (`required` or a named function), rides in `SamplingParams.response_format`
so the engines constrain the answer with a grammar (worker.grammar) exactly as they do for JSON
schemas. Pure: stdlib + orjson.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from contract.errors import InvalidRequest

NAME_PATTERN: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")
CHOICES: Final = ("none", "auto", "required")
EMPTY_OBJECT: Final = '{"type":"object","properties":{}}'

ToolChoice = Literal["auto", "required"]


@dataclass(frozen=True, slots=True)
class Function:
    """One tool the model may call; `parameters` is its JSON schema as compact JSON text."""

    name: str
    parameters: str = EMPTY_OBJECT
    description: str | None = None
    strict: bool = False


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model made: `arguments` is JSON text, as OpenAI carries it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Tools:
    """What the model is offered. `choice` is "auto" or "required" (a named function is
    "required" with `functions` narrowed to that one in `format`); `none` yields no Tools."""

    functions: tuple[Function, ...]
    choice: ToolChoice = "auto"
    parallel: bool = True
    format: ToolCallFormat | None = None  # set when calls are forced

    def function(self, name: str) -> Function | None:
        return next((f for f in self.functions if f.name == name), None)


@dataclass(frozen=True, slots=True)
class ToolCallFormat:
    """The answer must be one call (or, if `parallel`, one or more) of these functions."""

    functions: tuple[Function, ...]
    parallel: bool = True


def parse_tools(data: dict[str, Any]) -> Tools | None:
    """The request's tools, None when it offers none or `tool_choice` is "none"."""
    functions = _functions(data.get("tools"))
    choice = data.get("tool_choice")
    parallel = data.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest(
            "Invalid type for 'parallel_tool_calls': expected a boolean.",
            param="parallel_tool_calls",
        )
    if choice is not None and not functions and choice != "none":
        raise InvalidRequest(
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
            param="tool_choice",
        )
    if not functions or choice == "none":
        return None
    parallel = parallel is not False
    if choice is None or choice == "auto":
        return Tools(functions, "auto", parallel)
    if choice == "required":
        return Tools(functions, "required", parallel, ToolCallFormat(functions, parallel))
    named = _named(choice, functions)
    return Tools(functions, "required", parallel, ToolCallFormat((named,), parallel=False))


def _named(choice: Any, functions: tuple[Function, ...]) -> Function:
    if isinstance(choice, str):
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': expected one of 'none', 'auto', 'required' or "
            f"an object naming a function, got {choice!r}.",
            param="tool_choice",
        )
    spec = choice.get("function") if isinstance(choice, dict) else None
    name = spec.get("name") if isinstance(spec, dict) else None
    if (
        not isinstance(choice, dict)
        or choice.get("type") != "function"
        or not isinstance(name, str)
    ):
        raise InvalidRequest(
            'Invalid value for \'tool_choice\': expected {"type": "function", "function": '
            '{"name": ...}}.',
            param="tool_choice",
        )
    found = next((f for f in functions if f.name == name), None)
    if found is None:
        raise InvalidRequest(
            f"Invalid value for 'tool_choice': function {name!r} is not one of 'tools'.",
            param="tool_choice",
        )
    return found


def _functions(raw: Any) -> tuple[Function, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest("Invalid type for 'tools': expected an array.", param="tools")
    out: list[Function] = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidRequest(
                f"Invalid value for '{where}.type': only 'function' tools are supported.",
                param=f"{where}.type",
            )
        function = _function(tool.get("function"), f"{where}.function")
        if any(f.name == function.name for f in out):
            raise InvalidRequest(
                f"Invalid 'tools': the function name {function.name!r} appears twice.",
                param=f"{where}.function.name",
            )
        out.append(function)
    return tuple(out)


def _function(spec: Any, where: str) -> Function:
    if not isinstance(spec, dict):
        raise InvalidRequest(f"Missing required parameter: '{where}'.", param=where)
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidRequest(
            f"Invalid '{where}.name': must be 1 to 64 characters of a-z, A-Z, 0-9, underscore "
            "or dash.",
            param=f"{where}.name",
        )
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(
            f"Invalid type for '{where}.description': expected a string.",
            param=f"{where}.description",
        )
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest(
            f"Invalid type for '{where}.strict': expected a boolean.", param=f"{where}.strict"
        )
    parameters = spec.get("parameters")
    if parameters is None:
        return Function(name, EMPTY_OBJECT, description, bool(strict))
    if not isinstance(parameters, dict):
        raise InvalidRequest(
            f"Invalid type for '{where}.parameters': expected an object.",
            param=f"{where}.parameters",
        )
    try:
        text = orjson.dumps(parameters).decode()
    except TypeError:
        raise InvalidRequest(
            f"Invalid '{where}.parameters': it cannot be encoded as JSON.",
            param=f"{where}.parameters",
        ) from None
    return Function(name, text, description, bool(strict))


def parse_tool_calls(raw: Any, where: str) -> tuple[ToolCall, ...]:
    """An assistant message's `tool_calls`, as the client sent them back."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest(
            f"Invalid type for '{where}.tool_calls': expected an array.",
            param=f"{where}.tool_calls",
        )
    calls = []
    for j, call in enumerate(raw):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(function, dict):
            raise InvalidRequest(f"Missing required parameter: '{at}.function'.", param=at)
        for key, value in (("id", call.get("id")), ("function.name", function.get("name"))):
            if not isinstance(value, str) or not value:
                raise InvalidRequest(
                    f"Missing required parameter: '{at}.{key}'.", param=f"{at}.{key}"
                )
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            raise InvalidRequest(
                f"Invalid type for '{at}.function.arguments': expected a string.",
                param=f"{at}.function.arguments",
            )
        calls.append(ToolCall(call["id"], function["name"], arguments))
    return tuple(calls)


def tool_call_id(raw: Any, where: str, answered: set[str]) -> str:
    """A tool message's `tool_call_id`, which must answer a call made earlier."""
    if not isinstance(raw, str) or not raw:
        raise InvalidRequest(
            f"Missing required parameter: '{where}.tool_call_id'.",
            param=f"{where}.tool_call_id",
        )
    if raw not in answered:
        raise InvalidRequest(
            f"Invalid parameter: '{where}' with role 'tool' must be a response to a preceding "
            f"message with 'tool_calls' (no call has the id {raw!r}).",
            param=f"{where}.tool_call_id",
        )
    return raw
