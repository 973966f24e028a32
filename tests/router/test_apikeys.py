"""Key authentication against a real Redis: the 401 matrix, the bearer header, the KeyCache."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from redis.asyncio import Redis

from contract.errors import AuthenticationFailed, NotFound
from contract.keyspace import DEFAULT_KEYSPACE
from contract.registry import now_ms
from router import tenant_admin
from router.apikeys import (
    INVALID_KEY,
    MAX_CACHE_TTL_S,
    MISSING_KEY,
    KeyCache,
    authenticate,
    parse_bearer,
)
from router.tenants import KeyStatus, Project, apikey_key, generate_key, hash_key

from .conftest import FakeClock


async def make_project(redis: Redis[bytes], name: str = "My Project") -> Project:
    return await tenant_admin.create_project(redis, name)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, MISSING_KEY),
        ("", MISSING_KEY),
        ("sk-abcdef", INVALID_KEY),
        ("xero_my-project_short", INVALID_KEY),
        ("xero_My_Project_" + "a" * 43, INVALID_KEY),
        ("xero_my-project_" + "a" * 43 + " ", INVALID_KEY),
        ("xero_my-project_" + "a" * 300, INVALID_KEY),
        (generate_key("my-project"), INVALID_KEY),  # well-formed but unknown
    ],
)
async def test_bad_keys_are_401(redis: Redis[bytes], token: str | None, message: str) -> None:
    await make_project(redis)
    with pytest.raises(AuthenticationFailed) as info:
        await authenticate(redis, token)
    assert info.value.status == 401 and info.value.code == "invalid_api_key"
    assert info.value.message == message


async def test_revoked_expired_deleted_keys_are_401(redis: Redis[bytes]) -> None:
    project = await make_project(redis)
    revoked = await tenant_admin.create_key(redis, project.project_id)
    record = await tenant_admin.revoke_key(redis, revoked.record.key_id)
    assert record.status(now_ms()) is KeyStatus.REVOKED

    expires_ms = now_ms() + 60_000
    expiring = await tenant_admin.create_key(redis, project.project_id, expires_ms=expires_ms)
    assert await authenticate(redis, expiring.key, at_ms=expires_ms - 1) == expiring.record

    deleted = await tenant_admin.create_key(redis, project.project_id)
    await tenant_admin.delete_key(redis, deleted.record.key_id)
    with pytest.raises(NotFound):
        await tenant_admin.revoke_key(redis, deleted.record.key_id)

    doomed = await make_project(redis, "doomed")
    orphan = await tenant_admin.create_key(redis, doomed.project_id)
    await tenant_admin.delete_project(redis, doomed.project_id)

    cases = [
        (revoked.key, None),
        (expiring.key, expires_ms),
        (deleted.key, None),
        (orphan.key, None),
    ]
    for key, at_ms in cases:
        with pytest.raises(AuthenticationFailed) as info:
            await authenticate(redis, key, at_ms=at_ms)
        assert info.value.message == INVALID_KEY
    listed = await tenant_admin.list_keys(redis, project.project_id)
    assert [k.key_id for k in listed] == [revoked.record.key_id, expiring.record.key_id]


def test_parse_bearer() -> None:
    assert parse_bearer("Bearer xero_a_b") == "xero_a_b"
    assert parse_bearer("bearer   xero_a_b ") == "xero_a_b"
    for header in (None, "", "Bearer", "Bearer   ", "Basic abc", "xero_a_b"):
        with pytest.raises(AuthenticationFailed, match="didn't provide"):
            parse_bearer(header)


async def test_cache_sees_revocation_within_ttl(redis: Redis[bytes], clock: FakeClock) -> None:
    project = await make_project(redis)
    new = await tenant_admin.create_key(redis, project.project_id)
    cache = KeyCache(redis, ttl_s=2.0, clock=clock.monotonic, wall_ms=clock.wall_ms)
    assert await cache.authenticate(new.key) == new.record
    await tenant_admin.revoke_key(redis, new.record.key_id)
    clock.advance(1.9)
    assert await cache.authenticate(new.key) == new.record  # served from the cache
    clock.advance(0.1)
    with pytest.raises(AuthenticationFailed):
        await cache.authenticate(new.key)


async def test_cache_checks_expiry_on_every_hit(redis: Redis[bytes], clock: FakeClock) -> None:
    project = await make_project(redis)
    new = await tenant_admin.create_key(redis, project.project_id, expires_ms=clock.wall + 1000)
    cache = KeyCache(redis, ttl_s=5.0, clock=clock.monotonic, wall_ms=clock.wall_ms)
    assert await cache.authenticate(new.key) == new.record
    clock.advance(1.0)
    with pytest.raises(AuthenticationFailed):
        await cache.authenticate(new.key)


async def _hgetall_calls(redis: Redis[bytes]) -> int:
    stats: Mapping[str, Any] = await redis.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_cache_caches_unknown_keys_and_is_bounded(
    redis: Redis[bytes], clock: FakeClock
) -> None:
    await make_project(redis)
    cache = KeyCache(redis, ttl_s=1.0, max_entries=3, clock=clock.monotonic, wall_ms=clock.wall_ms)
    unknown = [generate_key("my-project") for _ in range(5)]
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            await cache.authenticate(unknown[0])
    assert await _hgetall_calls(redis) == 1  # the second miss came from the cache
    for key in unknown:
        with pytest.raises(AuthenticationFailed):
            await cache.authenticate(key)
    assert len(cache.cache) == 3
    with pytest.raises(AuthenticationFailed):
        await cache.authenticate("garbage")  # malformed: neither Redis nor the cache
    assert await _hgetall_calls(redis) == 5
    with pytest.raises(ValueError):
        KeyCache(redis, ttl_s=5.1)


async def test_cache_loads_a_cold_key_once(redis: Redis[bytes]) -> None:
    project = await make_project(redis)
    new = await tenant_admin.create_key(redis, project.project_id)
    cache = KeyCache(redis)
    records = await asyncio.gather(*(cache.authenticate(new.key) for _ in range(50)))
    assert records == [new.record] * 50
    assert await _hgetall_calls(redis) == 1


async def test_a_record_under_the_wrong_name_or_undecodable_is_unknown(
    redis: Redis[bytes],
) -> None:
    project = await make_project(redis)
    new = await tenant_admin.create_key(redis, project.project_id)
    forged = generate_key(project.slug)
    # A copy of a real record under another key's name: its stored digest does not match.
    ks = DEFAULT_KEYSPACE
    real: dict[str | bytes, bytes | float | int | str] = {
        k: v for k, v in (await redis.hgetall(apikey_key(ks, hash_key(new.key)))).items()
    }
    await redis.hset(apikey_key(ks, hash_key(forged)), mapping=real)
    broken = generate_key(project.slug)
    await redis.hset(apikey_key(ks, hash_key(broken)), "key_id", "key_x")  # fields missing
    for key in (forged, broken):
        with pytest.raises(AuthenticationFailed) as info:
            await authenticate(redis, key)
        assert info.value.message == INVALID_KEY
    assert await authenticate(redis, new.key) == new.record


def test_cache_ttl_is_bounded(redis: Redis[bytes]) -> None:
    assert KeyCache(redis, ttl_s=MAX_CACHE_TTL_S).cache.ttl_s == MAX_CACHE_TTL_S
    for ttl_s in (-0.1, MAX_CACHE_TTL_S + 0.1, float("nan")):
        with pytest.raises(ValueError, match="ttl_s"):
            KeyCache(redis, ttl_s=ttl_s)
