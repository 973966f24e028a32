"""Concurrency leases kept alive: each router renews the slots of its own requests in flight.

A key's requests in flight are a sorted set in Redis scored by lease deadline (router.ratelimit).
A lease as long as a request's longest life would hold a dead router's slots for an hour; so
leases are short (`--concurrency-lease-s`, 30 s) and every router renews all of its own, in one
script call, three times per lease. A router that dies stops renewing and its slots free within a
lease. A router cut off from Redis for longer than that loses its hold, and other replicas may
admit past the limit until it is back: the limit errs toward serving, never toward a stuck key.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import RedisError

from contract.keyspace import Keyspace
from router.tenants import concurrency_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

RENEWALS_PER_LEASE: Final = 3

# KEYS: concurrency sets; ARGV[1]: lease ms, ARGV[1 + i]: the slot held in KEYS[i]. Only slots
# still present are renewed (XX): one that expired meanwhile stays gone.
RENEW_LUA: Final = """
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', deadline, ARGV[i + 1])
  redis.call('PEXPIRE', key, ARGV[1], 'GT')
end
return #KEYS
"""


class LeaseKeeper:
    """The slots this router holds, renewed in the background until each is dropped."""

    def __init__(self, redis: Redis[Any], keyspace: Keyspace, lease_s: float) -> None:
        self.lease_ms: Final = round(lease_s * 1000)
        self._period_s = lease_s / RENEWALS_PER_LEASE
        self._keyspace = keyspace
        self._renew = redis.register_script(RENEW_LUA)
        self._held: dict[str, str] = {}  # slot id -> its concurrency key
        self._task: asyncio.Task[None] | None = None

    def hold(self, key_id: str, slot: str) -> None:
        self._held[slot] = concurrency_key(self._keyspace, key_id)

    def drop(self, slot: str) -> None:
        self._held.pop(slot, None)

    def __len__(self) -> int:
        return len(self._held)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="concurrency-leases")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def renew(self) -> int:
        """Push every held slot's deadline one lease past now; how many were sent."""
        if not self._held:
            return 0
        held = list(self._held.items())
        keys = [key for _, key in held]
        await self._renew(keys=keys, args=[self.lease_ms, *(slot for slot, _ in held)])
        return len(held)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._period_s)
            try:
                await self.renew()
            except RedisError as exc:
                logger.warning("could not renew %d concurrency leases: %r", len(self), exc)
