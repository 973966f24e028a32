"""API key authentication: the bearer header, the key's format, its record in Redis, a cache.

Routers authenticate through a KeyCache (one per app) so a request costs no Redis round trip
for a key seen in the last `ttl_s` seconds; a revocation therefore takes effect on every replica
within that TTL, which is capped at MAX_CACHE_TTL_S. Every refusal is AuthenticationFailed (401),
with one message for malformed, unknown, revoked and expired keys.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from contract.errors import AuthenticationFailed
from contract.keyspace import DEFAULT_KEYSPACE, Keyspace
from contract.registry import now_ms
from router.tenants import API_KEY_RE, MAX_KEY_CHARS, KeyRecord, KeyStatus, apikey_key, hash_key
from router.ttlcache import TtlCache

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

MAX_CACHE_TTL_S = 5.0  # the longest a revoked key may keep working on a replica
DEFAULT_CACHE_TTL_S = 2.0
DEFAULT_CACHE_ENTRIES = 10_000

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
# One message for malformed, unknown, revoked and expired: no oracle for which one it was.
INVALID_KEY = "Incorrect API key provided."


def parse_bearer(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; AuthenticationFailed if none."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed(MISSING_KEY)
    return token


def key_digest(token: str | None) -> str:
    """The digest a well-formed key is stored under; AuthenticationFailed for anything else."""
    if not token:
        raise AuthenticationFailed(MISSING_KEY)
    if len(token) > MAX_KEY_CHARS or not API_KEY_RE.fullmatch(token):
        raise AuthenticationFailed(INVALID_KEY)
    return hash_key(token)


async def load_key(
    redis: Redis[Any], digest: str, *, keyspace: Keyspace = DEFAULT_KEYSPACE
) -> KeyRecord | None:
    """The record stored under a digest, or None (unknown or undecodable)."""
    raw = await redis.hgetall(apikey_key(keyspace, digest))
    if not raw:
        return None
    try:
        record, stored = KeyRecord.from_hash(raw)
    except ValueError:
        logger.warning("undecodable API key record in Redis; treating the key as unknown")
        return None
    # The lookup by name already matched the digest; this guards a record stored under the
    # wrong name, in constant time like every secret-derived comparison.
    return record if hmac.compare_digest(stored, digest) else None


def _usable(record: KeyRecord | None, at_ms: int) -> KeyRecord:
    if record is None or record.status(at_ms) is not KeyStatus.ACTIVE:
        raise AuthenticationFailed(INVALID_KEY)
    return record


async def authenticate(
    redis: Redis[Any],
    token: str | None,
    *,
    at_ms: int | None = None,
    keyspace: Keyspace = DEFAULT_KEYSPACE,
) -> KeyRecord:
    """The record of a usable key; AuthenticationFailed if missing, malformed, unknown,
    revoked or expired. Uncached: routers use KeyCache.authenticate."""
    record = await load_key(redis, key_digest(token), keyspace=keyspace)
    return _usable(record, now_ms() if at_ms is None else at_ms)


class KeyCache:
    """authenticate() behind a TtlCache of digest -> record (or None for an unknown key).

    Revoked and unknown keys are cached too, so a flood of bad keys costs Redis one lookup per
    key per TTL. Expiry is checked on every hit, so a cached key still stops at its expiry.
    """

    def __init__(
        self,
        redis: Redis[Any],
        *,
        ttl_s: float = DEFAULT_CACHE_TTL_S,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = now_ms,
        keyspace: Keyspace = DEFAULT_KEYSPACE,
    ) -> None:
        if not 0 <= ttl_s <= MAX_CACHE_TTL_S:  # the bound is what makes a revocation prompt
            raise ValueError(f"cache ttl_s must be between 0 and {MAX_CACHE_TTL_S}, got {ttl_s}")
        self._redis = redis
        self._wall_ms = wall_ms
        self._keyspace = keyspace
        self.cache: TtlCache[str, KeyRecord | None] = TtlCache(ttl_s, max_entries, clock)

    async def authenticate(self, token: str | None) -> KeyRecord:
        digest = key_digest(token)  # malformed keys never reach Redis nor the cache
        load = partial(load_key, self._redis, digest, keyspace=self._keyspace)
        record = await self.cache.get_or_load(digest, load)
        return _usable(record, self._wall_ms())
