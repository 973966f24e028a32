"""The shared rate limiter against a real Redis: exact limits, concurrency, TPM, headers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from redis.asyncio import Redis

from router.ratelimit import WINDOW_MS, Decision, Limit, RateLimiter, format_reset
from router.tenants import ratelimit_key

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
    await limiter.charge_tokens("key_a", 60, 100, T0)
    assert (await limiter.admit("key_a", 100, 100, T0)).remaining_tokens == 40
    await limiter.charge_tokens("key_a", 40, 100, T0)
    refused = await limiter.admit("key_a", 100, 100, T0)
    assert not refused.admitted and refused.refused_by is Limit.TOKENS
    assert refused.remaining_tokens == 0 and refused.reset_tokens_ms == WINDOW_MS
    assert refused.retry_after_ms == 600  # one token's worth: 60 s / 100
    assert refused.remaining_requests == 98  # a refused request takes nothing
    assert (await limiter.admit("key_a", 100, 100, T0 + 600)).admitted


async def test_token_debt_is_waited_out(redis: Redis[bytes]) -> None:
    limiter = RateLimiter(redis)
    assert (await limiter.admit("key_a", None, 100, T0)).admitted
    await limiter.charge_tokens("key_a", 250, 100, T0)  # 2.5 minutes of budget
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
    await limiter.charge_tokens("key_a", 500, None)
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
    ttl_ms = await redis.pttl(ratelimit_key("key_a"))
    assert 0 < ttl_ms <= 6_001  # six requests at 1 s each, then the bucket is full again
