"""Small validators for the request bodies of the text-completions and embeddings endpoints.

Each reads one optional key of a JSON object and refuses a bad value with OpenAI's 400 naming
that key (`param`). Pure: no aiohttp, no redis.
"""

from __future__ import annotations

import math
from typing import Any

from contract.errors import InvalidRequest


def require_model(data: dict[str, Any]) -> str:
    model = data.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    return model


def flag(data: dict[str, Any], key: str) -> bool:
    """An optional boolean; absent or null is False."""
    value = data.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"Invalid type for '{key}': expected a boolean.", param=key)
    return value


def _kind_error(key: str, kind: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid type for '{key}': expected {kind}.", param=key)


def integer(data: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _kind_error(key, "an integer")
    if value < low or value > high:
        code = "integer_out_of_range" if value > high else "integer_below_min_value"
        message = f"Invalid '{key}': integer must be between {low} and {high}, got {value}."
        raise InvalidRequest(message, param=key, code=code)
    return value


def number(data: dict[str, Any], key: str, low: float, high: float, default: float) -> float:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _kind_error(key, "a number")
    found = float(value)
    if math.isnan(found) or found < low or found > high:
        code = "decimal_above_max_value" if found > high else "decimal_below_min_value"
        message = f"Invalid '{key}': decimal must be between {low:g} and {high:g}, got {value}."
        raise InvalidRequest(message, param=key, code=code)
    return found


def only(data: dict[str, Any], key: str, allowed: tuple[Any, ...], why: str) -> None:
    """Refuse `key` unless it is absent or one of `allowed` (compared by type and value)."""
    value = data.get(key)
    if value is None or any(type(value) is type(a) and value == a for a in allowed):
        return
    raise InvalidRequest(why, param=key, code="unsupported_parameter")


def stop_sequences(raw: Any, most: int) -> tuple[str, ...]:
    """`stop`: a string or up to `most` strings; empty ones dropped."""
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else raw
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop")
    if len(stops) > most:
        raise InvalidRequest(
            f"Invalid 'stop': expected an array with maximum length {most}, but got an array "
            f"with length {len(stops)} instead.",
            param="stop",
            code="array_above_max_length",
        )
    return tuple(s for s in stops if s)


def include_usage(options: Any, stream: bool) -> bool:
    """`stream_options.include_usage`; stream_options is only allowed with stream on."""
    if options is None:
        return False
    if not stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
    try:
        return flag(options, "include_usage")
    except InvalidRequest:
        raise InvalidRequest(
            "Invalid type for 'stream_options.include_usage': expected a boolean.",
            param="stream_options.include_usage",
        ) from None
