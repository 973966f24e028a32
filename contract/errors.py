"""Every error a client can see, as one small tree; one middleware per app renders it.

    ApiError                         -> {"error": {"message", "type", "param", "code"}}
    ├── InvalidRequest               400 invalid_request_error
    │   └── ContextLengthExceeded    400 invalid_request_error / context_length_exceeded
    ├── AuthenticationFailed         401 invalid_request_error / invalid_api_key
    ├── PermissionDenied             403 permission_error
    ├── NotFound                     404 invalid_request_error / not_found
    │   └── ModelNotFound            404 invalid_request_error / model_not_found
    ├── MethodNotAllowed             405 invalid_request_error / method_not_allowed
    ├── RequestTimeout               408 invalid_request_error / request_timeout
    ├── PayloadTooLarge              413 invalid_request_error / payload_too_large
    ├── UnsupportedMediaType         415 invalid_request_error / unsupported_media_type
    ├── RateLimited                  429 rate_limit_exceeded (Retry-After)
    ├── ServiceUnavailable           503 service_unavailable (Retry-After)
    ├── UpstreamFailed               502 upstream_error
    └── UpstreamTimeout              504 timeout

`for_http_status` maps a web framework's own refusals (no route, wrong method, body too large)
into the tree, so router and workers word them alike. Pure: no aiohttp, no redis.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


class ApiError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after_s = retry_after_s

    def payload(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        # Retry-After is whole seconds; never advertise 0, which invites a hot retry loop.
        return {"Retry-After": str(max(1, round(self.retry_after_s)))}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    default_code = "context_length_exceeded"


class AuthenticationFailed(ApiError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(ApiError):
    status = 403
    type = "permission_error"
    default_code = "permission_denied"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )


class MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class RequestTimeout(ApiError):
    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    default_code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    type = "invalid_request_error"
    default_code = "unsupported_media_type"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_exceeded"
    default_code = "rate_limit_exceeded"


class ServiceUnavailable(ApiError):
    status = 503
    type = "service_unavailable"
    default_code = "service_unavailable"


class UpstreamFailed(ApiError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"


class UpstreamTimeout(ApiError):
    status = 504
    type = "timeout"
    default_code = "timeout"


def internal_error_body() -> bytes:
    """The body for a bug: a fixed message, never a traceback."""
    return orjson.dumps(
        {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    )


def for_http_status(status: int, method: str, path: str, reason: str) -> ApiError | None:
    """The body for a framework's own 4xx refusal of `method path`; None for a 5xx.

    The caller answers with `status` itself, which for a generic 4xx may differ from the
    error's class status.
    """
    where = f"{method} {path}"
    if status == 404:
        return NotFound(f"Invalid URL ({where})")
    if status == 405:
        return MethodNotAllowed(f"Method not allowed ({where})")
    if status == 413:
        return PayloadTooLarge("The request body is too large.")
    if status == 415:
        return UnsupportedMediaType(reason)
    if status < 500:
        return InvalidRequest(reason)  # answered with the framework's own status (411, 431, ...)
    return None
