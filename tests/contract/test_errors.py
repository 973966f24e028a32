"""contract.errors: each class's status, type and code, the rendered body, Retry-After."""

from __future__ import annotations

import orjson
import pytest

from contract.errors import (
    ApiError,
    AuthenticationFailed,
    ContextLengthExceeded,
    InvalidRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMediaType,
    UpstreamFailed,
    UpstreamTimeout,
    for_http_status,
    internal_error_body,
)

# The table in the module docstring: what a client sees for each class.
CLASSES: list[tuple[type[ApiError], int, str, str | None]] = [
    (ApiError, 500, "server_error", None),
    (InvalidRequest, 400, "invalid_request_error", None),
    (ContextLengthExceeded, 400, "invalid_request_error", "context_length_exceeded"),
    (AuthenticationFailed, 401, "invalid_request_error", "invalid_api_key"),
    (PermissionDenied, 403, "permission_error", "permission_denied"),
    (NotFound, 404, "invalid_request_error", "not_found"),
    (MethodNotAllowed, 405, "invalid_request_error", "method_not_allowed"),
    (RequestTimeout, 408, "invalid_request_error", "request_timeout"),
    (PayloadTooLarge, 413, "invalid_request_error", "payload_too_large"),
    (UnsupportedMediaType, 415, "invalid_request_error", "unsupported_media_type"),
    (RateLimited, 429, "rate_limit_exceeded", "rate_limit_exceeded"),
    (ServiceUnavailable, 503, "service_unavailable", "service_unavailable"),
    (UpstreamFailed, 502, "upstream_error", "upstream_error"),
    (UpstreamTimeout, 504, "timeout", "timeout"),
]


@pytest.mark.parametrize(("cls", "status", "kind", "code"), CLASSES)
def test_each_class_renders_its_status_type_and_default_code(
    cls: type[ApiError], status: int, kind: str, code: str | None
) -> None:
    error = cls("it went wrong")
    assert (error.status, error.type, error.code) == (status, kind, code)
    assert orjson.loads(error.body()) == {
        "error": {"message": "it went wrong", "type": kind, "param": None, "code": code}
    }
    assert error.headers() == {}
    assert str(error) == "it went wrong"


def test_the_tree_nests_as_drawn() -> None:
    assert issubclass(ContextLengthExceeded, InvalidRequest)
    assert issubclass(ModelNotFound, NotFound)
    assert all(issubclass(cls, ApiError) for cls, *_ in CLASSES)


def test_param_and_an_explicit_code_are_rendered() -> None:
    error = InvalidRequest("bad", param="messages[0].role", code="empty_array")
    assert error.payload() == {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "messages[0].role",
            "code": "empty_array",
        }
    }
    assert ContextLengthExceeded("long", code="other").code == "other"


def test_model_not_found_names_the_model_and_the_param() -> None:
    error = ModelNotFound("gpt-9")
    assert error.payload()["error"] == {
        "message": "The model `gpt-9` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert error.status == 404


@pytest.mark.parametrize(
    ("retry_after_s", "header"),
    [
        (0.0, "1"),  # never 0: that invites a hot retry loop
        (0.2, "1"),
        (-3.0, "1"),
        (1.0, "1"),
        (1.4, "1"),
        (1.6, "2"),
        (7.0, "7"),
        (59.9, "60"),
    ],
)
def test_retry_after_is_whole_seconds_and_never_zero(retry_after_s: float, header: str) -> None:
    for cls in (RateLimited, ServiceUnavailable):
        assert cls("slow down", retry_after_s=retry_after_s).headers() == {"Retry-After": header}


def test_retry_after_does_not_leak_into_the_body() -> None:
    error = RateLimited("slow down", retry_after_s=3)
    assert set(orjson.loads(error.body())["error"]) == {"message", "type", "param", "code"}


def test_internal_error_body_is_fixed_and_has_no_traceback() -> None:
    try:
        raise RuntimeError("secret detail")
    except RuntimeError:
        body = internal_error_body()
    assert orjson.loads(body) == {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert b"Traceback" not in body and b"secret" not in body


@pytest.mark.parametrize(
    ("status", "cls", "message", "code"),
    [
        (404, NotFound, "Invalid URL (GET /v1/nothing)", "not_found"),
        (405, MethodNotAllowed, "Method not allowed (GET /v1/nothing)", "method_not_allowed"),
        (413, PayloadTooLarge, "The request body is too large.", "payload_too_large"),
        (415, UnsupportedMediaType, "framework reason", "unsupported_media_type"),
        (411, InvalidRequest, "framework reason", None),
        (431, InvalidRequest, "framework reason", None),
        (400, InvalidRequest, "framework reason", None),
    ],
)
def test_for_http_status_maps_framework_refusals(
    status: int, cls: type[ApiError], message: str, code: str | None
) -> None:
    error = for_http_status(status, "GET", "/v1/nothing", "framework reason")
    assert error is not None and type(error) is cls
    assert error.payload()["error"] == {
        "message": message,
        "type": "invalid_request_error",
        "param": None,
        "code": code,
    }


@pytest.mark.parametrize("status", [500, 502, 503, 504, 599])
def test_for_http_status_leaves_5xx_to_the_internal_body(status: int) -> None:
    assert for_http_status(status, "POST", "/v1/chat/completions", "Internal Server Error") is None
