"""The shared rate limiter against a real Redis: exact limits, replicas racing, TPM reservations
and settling, concurrency slots and their leases, the token counters, headers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from redis.asyncio import Redis

from contract.keyspace import Keyspace
from router.ratelimit import WINDOW_MS, Decision, Limit, RateLimiter, format_reset
from router.tenants import concurrency_key, key_usage_key, project_usage_key, ratelimit_key

KS = Keyspace()

T0 = 1_700_000_000_000


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (20, "20ms"), (999, "999ms"), (1000, "1s"), (11_535, "11.535s"),
     (7_800, "7.8s"), (60_000, "1m0s"), (90_500, "1m30.5s"), (360_000, "6m0s"),
     (3_723_000, "1h2m3s")],
)  # fmt: skip
def test_format_reset(ms: int, text: str) -> None:
    assert format_reset(ms) == text


async def test_requests_per_minute(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    decisions = [await limiter.admit("key_a", 3, None, T0) for _ in range(4)]
    assert [d.admitted for d in decisions] == [True, True, True, False]
    assert [d.remaining_requests for d in decisions] == [2, 1, 0, 0]
    refused = decisions[3]
    assert refused.refused_by is Limit.REQUESTS and refused.retry_after_ms == 20_000
    assert refused.headers() == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }
    # One request's worth refills every window/rpm; the bucket is full one window later.
    assert not (await limiter.admit("key_a", 3, None, T0 + 19_999)).admitted
    assert (await limiter.admit("key_a", 3, None, T0 + 20_000)).admitted
    assert (await limiter.admit("key_b", 3, None, T0)).admitted  # keys are independent
    full = await limiter.admit("key_a", 3, None, T0 + 20_000 + WINDOW_MS)
    assert full.remaining_requests == 2 and full.reset_requests_ms == 20_000


async def test_refusal_is_an_openai_429(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    await limiter.admit("key_a", 1, 1000, T0)
    refused = await limiter.admit("key_a", 1, 1000, T0 + 500)
    error = refused.error()
    assert error.status == 429 and error.code == "rate_limit_exceeded"
    assert "requests per minute" in error.message and "59.5s" in error.message
    assert error.headers() == {
        "Retry-After": "60",  # 59.5 s rounded up
        "x-ratelimit-limit-requests": "1",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "59.5s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "1000",
        "x-ratelimit-reset-tokens": "0s",
    }


@pytest.mark.parametrize("fixed_clock", [True, False], ids=["caller-clock", "redis-clock"])
async def test_replicas_share_one_limit(redis_url: str, fixed_clock: bool) -> None:
    clients: list[Redis[bytes]] = [Redis.from_url(redis_url) for _ in range(2)]
    try:
        limiters = [RateLimiter(client) for client in clients]
        now = T0 if fixed_clock else None
        calls = [limiters[i % 2].admit("key_shared", 25, 10_000, now) for i in range(200)]
        decisions = await asyncio.gather(*calls)
    finally:
        for client in clients:
            await client.aclose()  # type: ignore[attr-defined]
    # At 25 RPM the next request is only due 2.4 s later, far beyond this burst.
    assert sum(d.admitted for d in decisions) == 25
    assert sorted(d.remaining_requests or 0 for d in decisions if d.admitted) == list(range(25))


async def test_tokens_charged_after_the_fact_block_the_next_request(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    first = await limiter.admit("key_a", 100, 100, T0)
    assert first.admitted and first.remaining_tokens == 100
    await limiter.settle("key_a", "proj_A", (20, 40), tpm=100, now_ms=T0)
    assert (await limiter.admit("key_a", 100, 100, T0)).remaining_tokens == 40
    await limiter.settle("key_a", "proj_A", (40, 0), tpm=100, now_ms=T0)
    refused = await limiter.admit("key_a", 100, 100, T0)
    assert not refused.admitted and refused.refused_by is Limit.TOKENS
    assert refused.remaining_tokens == 0 and refused.reset_tokens_ms == WINDOW_MS
    assert refused.retry_after_ms == 600  # one token's worth: 60 s / 100
    assert refused.remaining_requests == 98  # a refused request takes nothing
    assert (await limiter.admit("key_a", 100, 100, T0 + 600)).admitted


async def test_token_debt_is_waited_out(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    assert (await limiter.admit("key_a", None, 100, T0)).admitted
    await limiter.settle("key_a", "proj_A", (50, 200), tpm=100, now_ms=T0)  # 2.5 minutes
    refused = await limiter.admit("key_a", None, 100, T0 + 60_000)
    # Full again at T0 + 150 s; one token is back at T0 + 90.6 s.
    assert not refused.admitted and refused.retry_after_ms == 30_600
    assert refused.headers()["x-ratelimit-reset-tokens"] == "1m30s"
    assert "x-ratelimit-limit-requests" not in refused.headers()
    assert not (await limiter.admit("key_a", None, 100, T0 + 90_599)).admitted
    assert (await limiter.admit("key_a", None, 100, T0 + 90_600)).admitted


async def test_unlimited_keys_cost_no_round_trip(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    decision = await limiter.admit("key_a", None, None)
    assert decision.admitted and decision.headers() == {}
    assert await _script_calls(redis) == {}
    assert await redis.dbsize() == 0


async def _script_calls(redis: Redis[bytes]) -> dict[str, int]:
    """EVAL/EVALSHA calls since the last stats reset (commands a script runs count apart)."""
    stats: Mapping[str, Any] = await redis.info("commandstats")
    return {k: int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_eval")}


async def test_one_evalsha_per_admit_and_state_expires(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    await limiter.admit("key_a", 60, None)  # loads the script (NOSCRIPT, then EVAL)
    await redis.config_resetstat()
    for _ in range(5):
        decision: Decision = await limiter.admit("key_a", 60, None)
        assert decision.admitted
    assert await _script_calls(redis) == {"cmdstat_evalsha": 5}
    ttl_ms = await redis.pttl(ratelimit_key(KS, "key_a"))
    assert 0 < ttl_ms <= 6_001  # six requests at 1 s each, then the bucket is full again


async def test_a_reservation_admits_only_what_fits(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    first = await limiter.admit("key_a", None, 100, T0, reserve=60)
    assert first.admitted and first.remaining_tokens == 40 and first.reserved_tokens == 60
    # 40 left: a request that may need 60 waits for 20 tokens' worth (12 s at 100 TPM).
    refused = await limiter.admit("key_a", None, 100, T0, reserve=60)
    assert not refused.admitted and refused.refused_by is Limit.TOKENS
    assert refused.retry_after_ms == 12_000 and refused.remaining_tokens == 40
    assert "reserves 60" in refused.error().message
    assert (await limiter.admit("key_a", None, 100, T0, reserve=40)).remaining_tokens == 0
    assert not (await limiter.admit("key_a", None, 100, T0, reserve=1)).admitted
    assert (await limiter.admit("key_a", None, 100, T0 + 12_000, reserve=20)).admitted


async def test_settling_gives_back_or_charges_the_difference(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    await limiter.admit("key_a", None, 100, T0, reserve=60)
    await limiter.settle("key_a", "proj_A", (5, 10), tpm=100, reserved=60, now_ms=T0)
    assert (await limiter.admit("key_a", None, 100, T0)).remaining_tokens == 85  # 45 back
    await limiter.settle("key_a", "proj_A", (0, 0), tpm=100, now_ms=T0)  # reserved nothing
    # Used more than reserved: the rest is charged, into debt if need be.
    await limiter.admit("key_a", None, 100, T0, reserve=10)
    await limiter.settle("key_a", "proj_A", (10, 140), tpm=100, reserved=10, now_ms=T0)
    refused = await limiter.admit("key_a", None, 100, T0)
    assert not refused.admitted and refused.reset_tokens_ms == 99_000  # 15 + 150 tokens


async def test_a_refund_never_moves_the_bucket_before_now(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    await limiter.admit("key_a", None, 100, T0, reserve=100)
    # Long after the reservation has refilled, an unused one must not bank credit.
    await limiter.settle("key_a", "proj_A", (0, 0), tpm=100, reserved=100, now_ms=T0 + 120_000)
    again = await limiter.admit("key_a", None, 100, T0 + 120_000, reserve=100)
    assert again.admitted and again.remaining_tokens == 0
    assert not (await limiter.admit("key_a", None, 100, T0 + 120_000, reserve=1)).admitted


async def test_settle_counts_tokens_per_key_and_project(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    await limiter.settle("key_a", "proj_A", (3, 7))
    await limiter.settle("key_b", "proj_A", (2, 0))
    await limiter.settle("key_b", "proj_A", (0, 0))  # nothing used: nothing counted
    usage = {
        name: await redis.hgetall(name)
        for name in (key_usage_key(KS, "key_a"), key_usage_key(KS, "key_b"))
    }
    assert usage == {
        "usage:key:key_a": {b"prompt_tokens": b"3", b"completion_tokens": b"7", b"requests": b"1"},
        "usage:key:key_b": {b"prompt_tokens": b"2", b"completion_tokens": b"0", b"requests": b"1"},
    }
    project = await redis.hgetall(project_usage_key(KS, "proj_A"))
    assert project == {b"prompt_tokens": b"5", b"completion_tokens": b"7", b"requests": b"2"}


async def test_concurrency_slots_are_held_until_settled(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)

    async def admit(request_id: str, now: int = T0) -> Decision:
        return await limiter.admit(
            "key_a", None, None, now, max_concurrent=2, slot=request_id, lease_ms=10_000
        )

    assert (await admit("r1")).admitted and (await admit("r2")).admitted
    refused = await admit("r3")
    assert not refused.admitted and refused.refused_by is Limit.CONCURRENT
    error = refused.error()
    assert error.status == 429 and error.code == "concurrency_limit_exceeded"
    assert "in flight: limit 2." in error.message and error.headers() == {"Retry-After": "1"}
    await limiter.settle("key_a", "proj_A", (1, 1), slot="r1", now_ms=T0)
    assert (await admit("r3")).admitted
    assert await redis.zrange(concurrency_key(KS, "key_a"), 0, -1) == [b"r2", b"r3"]
    assert 9_000 < await redis.pttl(concurrency_key(KS, "key_a")) <= 10_000


async def test_a_lost_slot_is_freed_when_its_lease_ends(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)

    async def admit(request_id: str, now: int) -> bool:
        decision = await limiter.admit(
            "key_a", None, None, now, max_concurrent=1, slot=request_id, lease_ms=5_000
        )
        return decision.admitted

    assert await admit("dies-with-its-router", T0)  # never settled
    assert not await admit("r2", T0 + 4_999)
    assert await admit("r2", T0 + 5_000)


async def test_a_refusal_by_one_limit_takes_nothing_from_the_others(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    options: dict[str, Any] = {"max_concurrent": 1, "lease_ms": 10_000}
    assert (await limiter.admit("key_a", 10, 100, T0, reserve=10, slot="r1", **options)).admitted
    busy = await limiter.admit("key_a", 10, 100, T0, reserve=10, slot="r2", **options)
    assert busy.refused_by is Limit.CONCURRENT
    assert (busy.remaining_requests, busy.remaining_tokens) == (9, 90)  # nothing taken
    too_big = await limiter.admit("key_a", 10, 100, T0 + 1, reserve=95, **options)
    assert too_big.refused_by is Limit.TOKENS  # the slot is also taken; tokens say more
    assert await redis.zcard(concurrency_key(KS, "key_a")) == 1


async def test_names_live_under_the_keyspace(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis, Keyspace("staging:"))
    await limiter.admit("key_a", 5, 100, max_concurrent=1, slot="r1", lease_ms=1000)
    await limiter.settle("key_a", "proj_A", (1, 2), tpm=100, slot="r1")
    names = sorted(n.decode() for n in await redis.keys("*"))
    assert names == [
        "staging:ratelimit:key_a",
        "staging:usage:key:key_a",
        "staging:usage:project:proj_A",
    ]  # the slot was freed, so its set is gone
