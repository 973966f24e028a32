"""The app's one middleware: a request id on every response, and every error OpenAI-shaped.

ApiError renders itself (contract.errors); aiohttp's own refusals (no route, wrong method, body
too large) are mapped by `contract.errors.for_http_status`, so router and workers word them
alike; anything else is a bug: logged with its traceback, answered 500 without one.
"""

from __future__ import annotations

import logging
import os
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from contract.errors import ApiError, for_http_status, internal_error_body
from router.appkeys import REQUEST_ID
from router.exchange import REQUEST_ID_HEADER

logger = logging.getLogger(__name__)

MAX_REQUEST_ID_CHARS: Final = 128
JSON: Final = "application/json"


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get(REQUEST_ID_HEADER)
    if request_id is None or not _sane(request_id):
        request_id = os.urandom(16).hex()
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except ApiError as exc:
        response = web.Response(
            status=exc.status, body=exc.body(), content_type=JSON, headers=exc.headers()
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers[REQUEST_ID_HEADER] = request_id
            raise
        response = _http_error(request, exc)
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        response = web.Response(status=500, body=internal_error_body(), content_type=JSON)
    if not response.prepared:  # a stream set its headers before it started
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _sane(request_id: str) -> bool:
    return (
        0 < len(request_id) <= MAX_REQUEST_ID_CHARS
        and request_id.isascii()
        and request_id.isprintable()
    )


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's refusal in OpenAI's shape, with aiohttp's own status (and Allow, for a 405)."""
    error = for_http_status(exc.status, request.method, request.path, exc.reason)
    body = internal_error_body() if error is None else error.body()
    response = web.Response(status=exc.status, body=body, content_type=JSON)
    allow = exc.headers.get(hdrs.ALLOW)
    if allow is not None:
        response.headers[hdrs.ALLOW] = allow
    return response
