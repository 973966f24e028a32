"""Who is asking and what they may use: the tenancy step of every request.

A request names its project and endpoint by path (`/proj_X/my-endpoint/v1/...`), by Host
(`my-endpoint.proj_X.<base-domain>`), or not at all (`/v1/...`: the key's project, any of its
endpoints). Order matters: the key is checked first, so a bad key gets 401 and never a hint about
which projects or endpoints exist; a key used on another project's URL gets that project's 404.

Metering: a request made with a key is admitted (`admit`) and, however it ends, settled once
(`settle`); requests without a key (auth off) are not metered at all. Admission takes, in one
rate-limit script call (router.ratelimit), a request against the key's RPM, a reservation against
its TPM and a concurrency slot, each only if the key has that limit. The reservation is the
request's worst case: its prompt estimated from the body (router.exchange) plus its length bound
(max_tokens times n, else --reserve-max-tokens per choice), capped at the key's whole TPM so a big
request waits for a full bucket instead of being refused forever. The slot is a short lease that
this router renews while the request lives (router.leases), so a router that dies mid-request frees
it within `--concurrency-lease-s`. Settling charges what the relay metered
(router.exchange.TokenMeter: the exact usage when the worker sent it, else the prompt and the
frames relayed), frees the slot and adds the tokens to the key's and project's counters, in Redis
and in the router's metrics; it runs shielded from the client's cancellation and off the answer's
path (a task: the client never waits for it), and a Redis failure there is logged and counted,
never the client's.

Redis is touched only through the key and endpoint caches (a few seconds' TTL), one admit call
for keys with limits, and one settle call per keyed request; a Redis failure before the answer is
a 503, never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from aiohttp import hdrs, web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contract.errors import ModelNotFound, NotFound, ServiceUnavailable
from contract.keyspace import Keyspace
from router.apikeys import DEFAULT_CACHE_ENTRIES, KeyCache, parse_bearer
from router.config import RouterConfig
from router.exchange import PROMPT_BYTES_PER_TOKEN, TokenMeter
from router.hosts import named_by_host
from router.leases import LeaseKeeper
from router.metrics import RouterMetrics
from router.ratelimit import UNLIMITED, Decision, RateLimiter
from router.tenants import Endpoint, KeyRecord, find_endpoint, list_endpoints, normalize_project_id
from router.ttlcache import TtlCache

logger = logging.getLogger(__name__)

T = TypeVar("T")
REDIS_RETRY_AFTER_S = 1.0
SLOT_ID_BYTES = 8


@dataclass(frozen=True, slots=True)
class Scope:
    key: KeyRecord | None  # None when auth is off
    project_id: str | None
    endpoint: Endpoint | None  # the endpoint the URL or Host names, if any
    models: frozenset[str] | None  # what the caller may use; None: anything

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


OPEN = Scope(key=None, project_id=None, endpoint=None, models=None)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A keyed request's admission: what `settle` undoes and charges when the request ends."""

    key: KeyRecord
    slot: str  # its concurrency slot's id, made here (a client's request id may repeat); or ""
    decision: Decision  # its x-ratelimit-* headers and the tokens it reserved
    meter: TokenMeter  # what the relay saw of the request's usage


class Access:
    """One per app: turns a request into its Scope (key, project, endpoint, allowed models),
    then admits it against the key's limits and settles its usage when it ends (see above).

    Keys, endpoints and a project's models are each cached for `config.key_cache_ttl_s`, so a
    change made with the admin tools reaches every replica within that TTL.
    """

    def __init__(
        self,
        redis: Redis[Any],
        config: RouterConfig,
        metrics: RouterMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._keyspace: Keyspace = config.keyspace
        self._metrics = metrics
        self._auth = config.auth
        self._base_domain = config.base_domain
        self.leases = LeaseKeeper(redis, self._keyspace, config.concurrency_lease_s)
        self._settling: set[asyncio.Task[None]] = set()
        ttl = config.key_cache_ttl_s
        # Rejects a TTL past the bound.
        self._keys = KeyCache(redis, ttl_s=ttl, clock=clock, keyspace=self._keyspace)
        self._endpoints: TtlCache[tuple[str, str], Endpoint | None] = TtlCache(
            ttl, DEFAULT_CACHE_ENTRIES, clock
        )
        self._project_models: TtlCache[str, frozenset[str]] = TtlCache(
            ttl, DEFAULT_CACHE_ENTRIES, clock
        )
        self.limiter = RateLimiter(redis, self._keyspace)

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
            load = partial(find_endpoint, self._redis, project, name, keyspace=self._keyspace)
            endpoint = await self._endpoints.get_or_load((project, name), load)
            if endpoint is None:
                raise NotFound(f"Endpoint `{name}` not found.")
            return Scope(key, project, endpoint, frozenset(endpoint.models))
        models = await self._project_models.get_or_load(
            project, partial(_project_models, self._redis, project, self._keyspace)
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

    async def admit(self, key: KeyRecord, body_bytes: int, length_bound: int) -> Ticket:
        """The key's admission of a request, or its 429 (or 503 without Redis).
        `length_bound`: the most completion tokens the request may generate, all choices."""
        meter = TokenMeter(body_bytes // PROMPT_BYTES_PER_TOKEN)
        decision = UNLIMITED
        slot = os.urandom(SLOT_ID_BYTES).hex() if key.max_concurrent is not None else ""
        if key.limited:
            reserve = 0 if key.tpm is None else min(key.tpm, meter.estimate + length_bound)
            admit = self.limiter.admit(
                key.key_id,
                key.rpm,
                key.tpm,
                reserve=reserve,
                max_concurrent=key.max_concurrent,
                slot=slot,
                lease_ms=self.leases.lease_ms,
            )
            decision = await _redis_guard(admit)
            if not decision.admitted:
                raise decision.error()
            if slot:
                self.leases.hold(key.key_id, slot)
        return Ticket(key, slot, decision, meter)

    def start(self) -> None:
        self.leases.start()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Finish the settles under way (Redis closes after this), stop renewing leases."""
        if self._settling:
            await asyncio.wait(self._settling, timeout=timeout_s)
        await self.leases.close()

    def settle_soon(self, ticket: Ticket) -> None:
        """`settle` in a task of its own: the answer goes out without waiting for Redis, and
        a client that hangs up cannot cancel it."""
        task = asyncio.get_running_loop().create_task(self.settle(ticket))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def settle(self, ticket: Ticket) -> None:
        """Charge what the request used, free its slot, count its tokens; call it once, when
        the request has ended, whatever the way. Never raises for Redis."""
        if ticket.slot:
            self.leases.drop(ticket.slot)
        key, meter = ticket.key, ticket.meter
        usage = (meter.prompt_tokens, meter.completion_tokens)
        self._metrics.token_counters(key.project_id, key.key_id).add(*usage)
        settle = self.limiter.settle(
            key.key_id,
            key.project_id,
            usage,
            tpm=key.tpm,
            reserved=ticket.decision.reserved_tokens,
            slot=ticket.slot,
        )
        try:
            await settle
        except RedisError:
            # The response has been served; losing one charge beats failing it afterwards.
            self._metrics.settle_errors.inc()
            logger.warning("could not settle %d tokens of key %s", sum(usage), key.key_id)


async def _project_models(redis: Redis[Any], project_id: str, keyspace: Keyspace) -> frozenset[str]:
    endpoints = await list_endpoints(redis, project_id, keyspace=keyspace)
    return frozenset(m for e in endpoints for m in e.models)


async def _redis_guard(call: Awaitable[T]) -> T:
    try:
        return await call
    except RedisError as exc:
        logger.warning("Redis unavailable for authentication or rate limiting: %r", exc)
        raise ServiceUnavailable(
            "The service is temporarily unable to check API keys; retry shortly.",
            retry_after_s=REDIS_RETRY_AFTER_S,
        ) from None
