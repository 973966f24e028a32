"""`response_format` of a chat request: what the answer must be, as one small frozen value.

    {"type": "text"}                                     -> None (free text, the default)
    {"type": "json_object"}                              -> ResponseFormat("json_object")
    {"type": "json_schema", "json_schema": {"name", "schema", "strict"?, "description"?}}
                                                         -> ResponseFormat("json_schema", ...)

Only the shape is checked here; whether a schema's features can be enforced is the worker's
question (worker.grammar). The schema is kept as compact JSON text, keys in the client's order
(the order the answer's properties take), so equal schemas are equal, hashable values and a
worker can cache its grammar per schema. Pure: stdlib + orjson.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from contract.errors import InvalidRequest

PARAM: Final = "response_format"
NAME_PATTERN: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TYPES: Final = ("text", "json_object", "json_schema")

FormatKind = Literal["json_object", "json_schema"]


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    kind: FormatKind
    schema: str | None = None  # compact JSON text of the schema; json_schema only
    name: str | None = None
    strict: bool = False


def parse_response_format(raw: Any) -> ResponseFormat | None:
    """The request's `response_format`, None for free text; InvalidRequest when malformed."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _invalid("'response_format' must be an object.")
    kind = raw.get("type")
    if kind not in TYPES:
        raise _invalid(
            f"Invalid value for 'response_format.type': expected one of 'text', "
            f"'json_object', 'json_schema', got {_show(kind)}."
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object")
    return _json_schema(raw.get("json_schema"))


def _json_schema(spec: Any) -> ResponseFormat:
    where = "response_format.json_schema"
    if spec is None:
        raise _invalid(f"Missing required parameter: '{where}'.")
    if not isinstance(spec, dict):
        raise _invalid(f"'{where}' must be an object.")
    name = spec.get("name")
    if name is None:
        raise _invalid(f"Missing required parameter: '{where}.name'.")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise _invalid(
            f"Invalid '{where}.name': must be 1 to 64 characters of a-z, A-Z, 0-9, "
            "underscore or dash."
        )
    schema = spec.get("schema")
    if schema is None:
        raise _invalid(f"Missing required parameter: '{where}.schema'.")
    if not isinstance(schema, dict):
        raise _invalid(f"Invalid type for '{where}.schema': expected an object.")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _invalid(f"Invalid type for '{where}.strict': expected a boolean.")
    try:
        text = orjson.dumps(schema).decode()
    except TypeError:  # orjson's refusals: too deep, integers beyond 64 bits
        raise _invalid(f"Invalid '{where}.schema': it cannot be encoded as JSON.") from None
    return ResponseFormat("json_schema", schema=text, name=name, strict=bool(strict))


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, param=PARAM)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else type(value).__name__
