"""Projects, endpoints and keys against a real Redis: the auth matrix, the caches, the schema."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from redis.asyncio import Redis

from contract.errors import AuthenticationFailed, ModelNotFound, NotFound
from contract.registry import now_ms
from router import tenancy
from router.tenancy import (
    INVALID_KEY,
    MISSING_KEY,
    AlreadyExists,
    EndpointCache,
    KeyCache,
    Project,
    authenticate,
    parse_bearer,
    parse_host,
)
from router.ttlcache import MISS, TtlCache

from .conftest import FakeClock


async def make_project(redis: Redis[bytes], name: str = "My Project") -> Project:
    return await tenancy.create_project(redis, name)


async def test_project_crud(redis: Redis[bytes]) -> None:
    project = await make_project(redis)
    assert project.project_id.startswith("proj_") and project.slug == "my-project"
    assert await tenancy.get_project(redis, project.project_id) == project
    assert await tenancy.get_project(redis, project.project_id.lower()) == project
    assert await tenancy.list_projects(redis) == [project]
    await tenancy.delete_project(redis, project.project_id)
    assert await tenancy.list_projects(redis) == []
    for missing in (project.project_id, "proj_NOPE", "not-a-project"):
        with pytest.raises(NotFound):
            await tenancy.get_project(redis, missing)
    with pytest.raises(ValueError, match="slug"):
        await tenancy.create_project(redis, "x", slug="Bad_Slug")


async def test_endpoints_unique_per_project(redis: Redis[bytes]) -> None:
    one, two = await make_project(redis, "one"), await make_project(redis, "two")
    endpoint = await tenancy.create_endpoint(redis, one.project_id, "chat", ["m1", "m2", "m1"])
    assert endpoint.models == ("m1", "m2")
    with pytest.raises(AlreadyExists):
        await tenancy.create_endpoint(redis, one.project_id, "chat", ["m3"])
    # The same name in another project is another endpoint.
    await tenancy.create_endpoint(redis, two.project_id, "chat", ["m3"])
    assert (await tenancy.get_endpoint(redis, two.project_id, "chat")).models == ("m3",)
    for bad_name in ("Chat", "-chat", "a_b", "x" * 64):
        with pytest.raises(ValueError):
            await tenancy.create_endpoint(redis, one.project_id, bad_name, ["m"])
    with pytest.raises(ValueError):
        await tenancy.create_endpoint(redis, one.project_id, "empty", [])
    with pytest.raises(NotFound):
        await tenancy.create_endpoint(redis, "proj_NOPE", "chat", ["m"])
    assert [e.name for e in await tenancy.list_endpoints(redis, one.project_id)] == ["chat"]
    await tenancy.delete_endpoint(redis, one.project_id, "chat")
    with pytest.raises(NotFound):
        await tenancy.get_endpoint(redis, one.project_id, "chat")
    with pytest.raises(NotFound):
        await tenancy.delete_endpoint(redis, one.project_id, "chat")


async def test_key_shape(redis: Redis[bytes]) -> None:
    project = await make_project(redis)
    new = await tenancy.create_key(redis, project.project_id, name="ci", rpm=10, tpm=1000)
    slug, secret = new.key.removeprefix("xero_").split("_", 1)
    assert slug == project.slug and len(secret) >= 32
    assert new.record.prefix == f"xero_{slug}_{secret[:8]}"
    assert new.key not in repr(new) and secret not in repr(new.record)
    assert await authenticate(redis, new.key) == new.record
    with pytest.raises(ValueError):
        await tenancy.create_key(redis, project.project_id, rpm=0)
    with pytest.raises(ValueError):
        await tenancy.create_key(redis, project.project_id, expires_ms=now_ms() - 1)
    with pytest.raises(NotFound):
        await tenancy.create_key(redis, "proj_NOPE")


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
        (tenancy.generate_key("my-project"), INVALID_KEY),  # well-formed but unknown
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
    revoked = await tenancy.create_key(redis, project.project_id)
    record = await tenancy.revoke_key(redis, revoked.record.key_id)
    assert record.revoked_ms is not None and record.status(now_ms()) == "revoked"
    # Revoking again keeps the first time.
    assert (await tenancy.revoke_key(redis, revoked.record.key_id)).revoked_ms == record.revoked_ms

    expires_ms = now_ms() + 60_000
    expiring = await tenancy.create_key(redis, project.project_id, expires_ms=expires_ms)
    assert await authenticate(redis, expiring.key, at_ms=expires_ms - 1) == expiring.record

    deleted = await tenancy.create_key(redis, project.project_id)
    await tenancy.delete_key(redis, deleted.record.key_id)
    with pytest.raises(NotFound):
        await tenancy.revoke_key(redis, deleted.record.key_id)

    doomed = await make_project(redis, "doomed")
    orphan = await tenancy.create_key(redis, doomed.project_id)
    await tenancy.delete_project(redis, doomed.project_id)

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
    listed = await tenancy.list_keys(redis, project.project_id)
    assert [k.key_id for k in listed] == [revoked.record.key_id, expiring.record.key_id]


def test_parse_bearer() -> None:
    assert parse_bearer("Bearer xero_a_b") == "xero_a_b"
    assert parse_bearer("bearer   xero_a_b ") == "xero_a_b"
    for header in (None, "", "Bearer", "Bearer   ", "Basic abc", "xero_a_b"):
        with pytest.raises(AuthenticationFailed, match="didn't provide"):
            parse_bearer(header)


async def _dump(redis: Redis[bytes]) -> list[bytes]:
    """Every key name and every value in Redis, whatever its type."""
    out: list[bytes] = []
    async for name in redis.scan_iter(count=100):
        out.append(name)
        kind = (await redis.type(name)).decode()  # type: ignore[no-untyped-call]
        if kind == "string":
            out.append(await redis.get(name) or b"")
        elif kind == "hash":
            for k, v in (await redis.hgetall(name)).items():
                out += [k, v]
        elif kind == "set":
            out += list(await redis.smembers(name))
        else:
            raise AssertionError(f"unexpected {kind} at {name!r}")
    return out


async def test_keys_never_stored_in_clear(redis: Redis[bytes]) -> None:
    project = await make_project(redis)
    await tenancy.create_endpoint(redis, project.project_id, "chat", ["m"])
    keys = [await tenancy.create_key(redis, project.project_id, rpm=5) for _ in range(3)]
    await tenancy.revoke_key(redis, keys[0].record.key_id)
    dump = b"\n".join(await _dump(redis))
    for new in keys:
        secret = new.key.split("_", 2)[2]
        assert new.key.encode() not in dump
        assert secret.encode() not in dump
        assert secret[8:].encode() not in dump  # not even the part after the shown prefix
        assert tenancy.hash_key(new.key).encode() in dump  # what is stored instead
    for listed in await tenancy.list_keys(redis, project.project_id):
        assert "key_hash" not in listed.to_dict()


async def test_cache_sees_revocation_within_ttl(redis: Redis[bytes], clock: FakeClock) -> None:
    project = await make_project(redis)
    new = await tenancy.create_key(redis, project.project_id)
    cache = KeyCache(redis, ttl_s=2.0, clock=clock.monotonic, wall_ms=clock.wall_ms)
    assert await cache.authenticate(new.key) == new.record
    await tenancy.revoke_key(redis, new.record.key_id)
    clock.advance(1.9)
    assert await cache.authenticate(new.key) == new.record  # served from the cache
    clock.advance(0.1)
    with pytest.raises(AuthenticationFailed):
        await cache.authenticate(new.key)


async def test_cache_checks_expiry_on_every_hit(redis: Redis[bytes], clock: FakeClock) -> None:
    project = await make_project(redis)
    new = await tenancy.create_key(redis, project.project_id, expires_ms=clock.wall + 1000)
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
    unknown = [tenancy.generate_key("my-project") for _ in range(5)]
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
    new = await tenancy.create_key(redis, project.project_id)
    cache = KeyCache(redis)
    records = await asyncio.gather(*(cache.authenticate(new.key) for _ in range(50)))
    assert records == [new.record] * 50
    assert await _hgetall_calls(redis) == 1


async def test_access_scoping(redis: Redis[bytes], clock: FakeClock) -> None:
    mine, theirs = await make_project(redis, "mine"), await make_project(redis, "theirs")
    await tenancy.create_endpoint(redis, mine.project_id, "chat", ["m1"])
    await tenancy.create_endpoint(redis, theirs.project_id, "chat", ["m1"])
    key = (await tenancy.create_key(redis, mine.project_id)).record
    endpoints = EndpointCache(redis, clock=clock.monotonic)

    endpoint = await endpoints.resolve(key, mine.project_id.lower(), "chat", "m1")
    assert endpoint.project_id == mine.project_id
    with pytest.raises(ModelNotFound) as model_info:
        await endpoints.resolve(key, mine.project_id, "chat", "m2")
    assert model_info.value.code == "model_not_found" and model_info.value.status == 404
    # Another project's endpoint and a project that does not exist look the same.
    errors = []
    for project_id in (theirs.project_id, "proj_NOPE"):
        with pytest.raises(NotFound) as info:
            await endpoints.resolve(key, project_id, "chat", "m1")
        errors.append((info.value.code, info.value.message.replace(project_id, "?")))
    assert errors[0] == errors[1] == ("not_found", "Project `?` not found.")
    with pytest.raises(NotFound):
        await endpoints.resolve(key, mine.project_id, "nope", "m1")
    # A deleted endpoint is served from the cache until its TTL passes.
    await tenancy.delete_endpoint(redis, mine.project_id, "chat")
    await endpoints.resolve(key, mine.project_id, "chat", "m1")
    clock.advance(endpoints.cache.ttl_s)
    with pytest.raises(NotFound):
        await endpoints.resolve(key, mine.project_id, "chat", "m1")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("my-endpoint.proj_ABC123.api.example.com", ("proj_ABC123", "my-endpoint")),
        ("my-endpoint.proj_abc123.API.example.com:8443", ("proj_ABC123", "my-endpoint")),
        ("my-endpoint.proj_abc123.api.example.com.", ("proj_ABC123", "my-endpoint")),
        ("api.example.com", None),
        ("proj_ABC123.api.example.com", None),
        ("a.b.proj_ABC123.api.example.com", None),
        ("my-endpoint.proj_ABC123.evil.com", None),
        ("my-endpoint.proj_ABC123.xapi.example.com", None),
        ("my-endpoint.project.api.example.com", None),
        ("My_Endpoint.proj_ABC123.api.example.com", None),
        ("", None),
    ],
)
def test_parse_host(host: str, expected: tuple[str, str] | None) -> None:
    assert parse_host(host, "api.example.com") == expected


async def test_endpoint_for_host(redis: Redis[bytes]) -> None:
    project = await make_project(redis)
    endpoint = await tenancy.create_endpoint(redis, project.project_id, "my-endpoint", ["m"])
    host = f"my-endpoint.{project.project_id.lower()}.api.example.com"
    assert await tenancy.endpoint_for_host(redis, host, "api.example.com") == endpoint
    assert await tenancy.endpoint_for_host(redis, "x." + host, "api.example.com") is None
    other = f"other.{project.project_id}.api.example.com"
    assert await tenancy.endpoint_for_host(redis, other, "api.example.com") is None


async def test_ttl_cache_lru_ttl_and_failed_loads(clock: FakeClock) -> None:
    cache: TtlCache[str, int | None] = TtlCache(1.0, 2, clock.monotonic)
    cache.put("a", 1)
    cache.put("b", None)  # a cached negative is a hit, not a miss
    assert cache.get("b") is None and cache.get("a") == 1
    cache.put("c", 3)  # evicts b, the least recently used
    assert cache.get("b") is MISS and cache.get("a") == 1
    clock.advance(1.0)
    assert cache.get("a") is MISS and len(cache) == 1

    async def fail() -> int | None:
        raise ConnectionError("redis down")

    with pytest.raises(ConnectionError):
        await cache.get_or_load("d", fail)
    assert cache.get("d") is MISS  # errors are never cached

    async def seven() -> int | None:
        return 7

    assert await cache.get_or_load("d", seven) == 7 and cache.get("d") == 7
    off: TtlCache[str, int] = TtlCache(0.0, 2, clock.monotonic)
    off.put("a", 1)
    assert off.get("a") is MISS
