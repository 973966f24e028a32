"""Who is asking and what they may use: the tenancy step of every request.

A request names its project and endpoint by path (`/proj_X/my-endpoint/v1/...`), by Host
(`my-endpoint.proj_X.<base-domain>`), or not at all (`/v1/...`: the key's project, any of its
endpoints). Order matters: the key is checked first, so a bad key gets 401 and never a hint about
which projects or endpoints exist; a key used on another project's URL gets that project's 404.

Redis is touched only through the key and endpoint caches (a few seconds' TTL) and, for keys with
limits, one rate-limit script call; a Redis failure here is a 503, never a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from aiohttp import hdrs, web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract.errors import ModelNotFound, NotFound, ServiceUnavailable
from router.apikeys import DEFAULT_CACHE_ENTRIES, KeyCache, parse_bearer
from router.config import RouterConfig
from router.hosts import named_by_host
from router.ratelimit import UNLIMITED, Decision, RateLimiter
from router.tenants import Endpoint, KeyRecord, find_endpoint, list_endpoints, normalize_project_id
from router.ttlcache import TtlCache

logger = logging.getLogger(__name__)

T = TypeVar("T")
REDIS_RETRY_AFTER_S = 1.0


@dataclass(frozen=True, slots=True)
class Scope:
    key: KeyRecord | None  # None when auth is off
    project_id: str | None
    endpoint: Endpoint | None  # the endpoint the URL or Host names, if any
    models: frozenset[str] | None  # what the caller may use; None: anything

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


OPEN = Scope(key=None, project_id=None, endpoint=None, models=None)


class Access:
    """One per app: turns a request into its Scope (key, project, endpoint, allowed models),
    then admits it against the key's rate limits and charges its tokens afterwards.

    Keys, endpoints and a project's models are each cached for `config.key_cache_ttl_s`, so a
    change made with the admin tools reaches every replica within that TTL.
    """

    def __init__(
        self,
        redis: Redis[Any],
        config: RouterConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._auth = config.auth
        self._base_domain = config.base_domain
        ttl = config.key_cache_ttl_s
        self._keys = KeyCache(redis, ttl_s=ttl, clock=clock)  # rejects a TTL past the bound
        self._endpoints: TtlCache[tuple[str, str], Endpoint | None] = TtlCache(
            ttl, DEFAULT_CACHE_ENTRIES, clock
        )
        self._project_models: TtlCache[str, frozenset[str]] = TtlCache(
            ttl, DEFAULT_CACHE_ENTRIES, clock
        )
        self.limiter = RateLimiter(redis)

    async def scope(self, request: web.Request) -> Scope:
        """Authenticate and resolve what the URL or Host names; 401/404 on failure."""
        project, endpoint = self._named(request)
        if not self._auth and project is None:
            return OPEN
        return await _redis_guard(self._scope(request, project, endpoint))

    async def _scope(self, request: web.Request, project: str | None, name: str | None) -> Scope:
        key: KeyRecord | None = None
        if self._auth:
            token = parse_bearer(request.headers.get(hdrs.AUTHORIZATION))
            key = await self._keys.authenticate(token)
            if project is not None and normalize_project_id(project) != key.project_id:
                raise NotFound(f"Project `{project}` not found.")
            project = key.project_id
        else:
            project = normalize_project_id(project or "")
            if project is None:
                raise NotFound("Project not found.")
        if name is not None:
            load = partial(find_endpoint, self._redis, project, name)
            endpoint = await self._endpoints.get_or_load((project, name), load)
            if endpoint is None:
                raise NotFound(f"Endpoint `{name}` not found.")
            return Scope(key, project, endpoint, frozenset(endpoint.models))
        models = await self._project_models.get_or_load(
            project, partial(_project_models, self._redis, project)
        )
        return Scope(key, project, None, models)

    def _named(self, request: web.Request) -> tuple[str | None, str | None]:
        info = request.match_info
        project = info.get("project")
        if project is not None:
            return project, info.get("endpoint")
        if self._base_domain is None:
            return None, None
        return named_by_host(request.host, self._base_domain) or (None, None)

    def check_model(self, scope: Scope, model: str) -> None:
        if not scope.allows(model):
            raise ModelNotFound(model)

    async def admit(self, scope: Scope) -> Decision:
        key = scope.key
        if key is None or (key.rpm is None and key.tpm is None):
            return UNLIMITED
        decision = await _redis_guard(self.limiter.admit(key.key_id, key.rpm, key.tpm))
        if not decision.admitted:
            raise decision.error()
        return decision

    async def charge(self, scope: Scope, tokens: int) -> None:
        key = scope.key
        if key is None or key.tpm is None or tokens <= 0:
            return
        try:
            await self.limiter.charge_tokens(key.key_id, tokens, key.tpm)
        except RedisError:
            # The response has been served; losing one charge beats failing it afterwards.
            logger.warning("could not charge %d tokens to key %s", tokens, key.key_id)


async def _project_models(redis: Redis[Any], project_id: str) -> frozenset[str]:
    endpoints = await list_endpoints(redis, project_id)
    return frozenset(m for e in endpoints for m in e.models)


async def _redis_guard(call: Awaitable[T]) -> T:
    try:
        return await call
    except RedisError:
        logger.warning("Redis unavailable for authentication or rate limiting")
        raise ServiceUnavailable(
            "The service is temporarily unable to check API keys; retry shortly.",
            retry_after_s=REDIS_RETRY_AFTER_S,
        ) from None
