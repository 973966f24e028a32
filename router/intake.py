"""Reading a client's request body with bounds on its size and on the time it takes.

A body over `max_body_bytes` is 413 (aiohttp stops reading at the limit); a body that does not
arrive within `body_timeout_s` (a client that sent its headers and stalled, or trickles bytes) is
408, so a slow client holds a connection and a handler for a bounded time only. aiohttp itself
closes a connection that has not sent a complete request line and headers within its keep-alive
timeout (75 s under `web.run_app`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from contract.errors import InvalidRequest, PayloadTooLarge, RequestTimeout


async def read_body(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    try:
        if request.content.is_eof():  # it came with the headers: no wait, so no timer to arm
            return await request.read()
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"The request body exceeds {max_bytes} bytes.") from None
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {timeout_s:g} seconds."
        ) from None
    except web.HTTPException:
        raise
    except (RequestPayloadError, HttpProcessingError, ValueError, OSError):
        # A malformed chunked body, a body that does not decode as its Content-Encoding says.
        raise InvalidRequest("The request body could not be read.") from None
