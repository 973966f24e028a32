"""Only routers talk to workers: a shared secret on every request.

Routers send `Authorization: Bearer <secret>`, the header llama-server checks for `--api-key`,
so one router configuration fronts both. A worker with a secret answers anything else 401
(OpenAI-shaped) and logs the refusal, at most one line per REFUSAL_LOG_INTERVAL_S so that a scan
cannot flood the log; the comparison takes constant time. `/health` and `/metrics` stay open
for probes and scrapers: neither runs the model nor tells anything about a tenant. A worker
without a secret serves anyone who can reach it, and says so once at startup.

The secret comes from a file (`--worker-secret-file`, WORKER_WORKER_SECRET_FILE) or from the
environment (XERO_WORKER_SECRET), never from the command line, where any local user could read
it; it is never logged, and the config holds only the file's path.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from contract.errors import AuthenticationFailed
from contract.secrets import SECRET_ENV as SECRET_ENV
from contract.secrets import load_secret as load_secret
from contract.secrets import secret_file as secret_file

logger = logging.getLogger(__name__)

OPEN_ROUTES = frozenset({"/health", "/metrics"})
REFUSAL_LOG_INTERVAL_S = 10.0
REFUSED = "Only a router may call this worker: missing or wrong worker secret."


class RefusalLog:
    """One warning per refusal, at most one per `interval_s`; the rest are counted into the
    next line."""

    def __init__(
        self,
        interval_s: float = REFUSAL_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._next_at = float("-inf")
        self._suppressed = 0

    def refused(self, method: str, path: str, peer: str | None) -> bool:
        """Note one refusal; True when it was logged."""
        now = self._clock()
        if now < self._next_at:
            self._suppressed += 1
            return False
        logger.warning(
            "refused %s %s from %s: no valid worker secret (%d more refused since the last "
            "such line)",
            method,
            path,
            peer,
            self._suppressed,
        )
        self._next_at, self._suppressed = now + self._interval_s, 0
        return True


def auth_middleware(secret: str, refusals: RefusalLog | None = None) -> Middleware:
    """Refuse every request but those to OPEN_ROUTES without `Authorization: Bearer <secret>`."""
    expected = f"Bearer {secret}".encode()
    log = refusals if refusals is not None else RefusalLog()

    @web.middleware
    async def require_secret(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical in OPEN_ROUTES:
            return await handler(request)
        given = request.headers.get(hdrs.AUTHORIZATION, "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            log.refused(request.method, request.path, request.remote)
            raise AuthenticationFailed(REFUSED)
        return await handler(request)

    return require_secret
