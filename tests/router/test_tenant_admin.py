"""The admin operations against a real Redis: projects, endpoints and keys, created,
listed, revoked and deleted; keys stored only as their hash."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from contract.errors import NotFound
from contract.keyspace import Keyspace
from contract.registry import now_ms
from router import tenant_admin
from router.apikeys import authenticate
from router.ratelimit import RateLimiter
from router.tenant_admin import AlreadyExists
from router.tenants import KeyStatus, Project, get_project, hash_key, list_endpoints


async def make_project(redis: Redis[bytes], name: str = "My Project") -> Project:
    return await tenant_admin.create_project(redis, name)


async def test_project_crud(redis: Redis[bytes]) -> None:
    project = await make_project(redis)
    assert project.project_id.startswith("proj_") and project.slug == "my-project"
    assert await get_project(redis, project.project_id) == project
    assert await get_project(redis, project.project_id.lower()) == project
    assert await tenant_admin.list_projects(redis) == [project]
    await tenant_admin.delete_project(redis, project.project_id)
    assert await tenant_admin.list_projects(redis) == []
    for missing in (project.project_id, "proj_NOPE", "not-a-project"):
        with pytest.raises(NotFound):
            await get_project(redis, missing)
    with pytest.raises(ValueError, match="slug"):
        await tenant_admin.create_project(redis, "x", slug="Bad_Slug")


async def test_endpoints_unique_per_project(redis: Redis[bytes]) -> None:
    one, two = await make_project(redis, "one"), await make_project(redis, "two")
    endpoint = await tenant_admin.create_endpoint(redis, one.project_id, "chat", ["m1", "m2", "m1"])
    assert endpoint.models == ("m1", "m2")
    with pytest.raises(AlreadyExists):
        await tenant_admin.create_endpoint(redis, one.project_id, "chat", ["m3"])
    # The same name in another project is another endpoint.
    await tenant_admin.create_endpoint(redis, two.project_id, "chat", ["m3"])
    assert (await tenant_admin.get_endpoint(redis, two.project_id, "chat")).models == ("m3",)
    for bad_name in ("Chat", "-chat", "a_b", "x" * 64):
        with pytest.raises(ValueError):
            await tenant_admin.create_endpoint(redis, one.project_id, bad_name, ["m"])
    with pytest.raises(ValueError):
        await tenant_admin.create_endpoint(redis, one.project_id, "empty", [])
    with pytest.raises(NotFound):
        await tenant_admin.create_endpoint(redis, "proj_NOPE", "chat", ["m"])
    assert [e.name for e in await list_endpoints(redis, one.project_id)] == ["chat"]
    await tenant_admin.delete_endpoint(redis, one.project_id, "chat")
    with pytest.raises(NotFound):
        await tenant_admin.get_endpoint(redis, one.project_id, "chat")
    with pytest.raises(NotFound):
        await tenant_admin.delete_endpoint(redis, one.project_id, "chat")


async def test_key_shape(redis: Redis[bytes]) -> None:
    project = await make_project(redis)
    new = await tenant_admin.create_key(redis, project.project_id, name="ci", rpm=10, tpm=1000)
    slug, secret = new.key.removeprefix("xero_").split("_", 1)
    assert slug == project.slug and len(secret) >= 32
    assert new.record.prefix == f"xero_{slug}_{secret[:8]}"
    assert new.key not in repr(new) and secret not in repr(new.record)
    assert await authenticate(redis, new.key) == new.record
    with pytest.raises(ValueError):
        await tenant_admin.create_key(redis, project.project_id, rpm=0)
    with pytest.raises(ValueError):
        await tenant_admin.create_key(redis, project.project_id, expires_ms=now_ms() - 1)
    with pytest.raises(NotFound):
        await tenant_admin.create_key(redis, "proj_NOPE")


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
    await tenant_admin.create_endpoint(redis, project.project_id, "chat", ["m"])
    keys = [await tenant_admin.create_key(redis, project.project_id, rpm=5) for _ in range(3)]
    await tenant_admin.revoke_key(redis, keys[0].record.key_id)
    dump = b"\n".join(await _dump(redis))
    for new in keys:
        secret = new.key.split("_", 2)[2]
        assert new.key.encode() not in dump
        assert secret.encode() not in dump
        assert secret[8:].encode() not in dump  # not even the part after the shown prefix
        assert hash_key(new.key).encode() in dump  # what is stored instead
    for listed in await tenant_admin.list_keys(redis, project.project_id):
        assert "key_hash" not in listed.to_dict()


async def test_key_list_revoke_and_delete(redis: Redis[bytes]) -> None:
    project = await make_project(redis)
    kept, revoked, deleted = [
        await tenant_admin.create_key(redis, project.project_id) for _ in "abc"
    ]
    record = await tenant_admin.revoke_key(redis, revoked.record.key_id)
    assert record.revoked_ms is not None and record.status(now_ms()) is KeyStatus.REVOKED
    # Revoking again keeps the first time.
    again = await tenant_admin.revoke_key(redis, revoked.record.key_id)
    assert again.revoked_ms == record.revoked_ms
    assert await tenant_admin.get_key(redis, kept.record.key_id) == kept.record
    await tenant_admin.delete_key(redis, deleted.record.key_id)
    for missing in (deleted.record.key_id, "key_nope"):
        for operation in (tenant_admin.get_key, tenant_admin.revoke_key, tenant_admin.delete_key):
            with pytest.raises(NotFound):
                await operation(redis, missing)
    listed = await tenant_admin.list_keys(redis, project.project_id)
    # Oldest first; keys minted in the same millisecond are ordered by id.
    expected = sorted([kept.record, revoked.record], key=lambda r: (r.created_ms, r.key_id))
    assert [k.key_id for k in listed] == [r.key_id for r in expected]


async def test_delete_project_leaves_nothing(redis: Redis[bytes]) -> None:
    project = await make_project(redis)
    await tenant_admin.create_endpoint(redis, project.project_id, "chat", ["m"])
    new = await tenant_admin.create_key(redis, project.project_id, rpm=5)
    await _router_state(redis, project.project_id, new.record.key_id)
    await tenant_admin.delete_project(redis, project.project_id)
    assert await redis.dbsize() == 0
    with pytest.raises(NotFound):
        await tenant_admin.list_keys(redis, project.project_id)


async def _router_state(redis: Redis[bytes], project_id: str, key_id: str) -> None:
    """What routers write about a key: its rate state, a slot held, its usage counted."""
    limiter = RateLimiter(redis)
    await limiter.admit(key_id, 5, 100, reserve=10, max_concurrent=2, slot="r1", lease_ms=9)
    await limiter.admit(key_id, 5, 100, max_concurrent=2, slot="r2", lease_ms=60_000)
    await limiter.settle(key_id, project_id, (4, 6), tpm=100, reserved=10, slot="r1")


async def test_delete_key_drops_router_state_but_not_the_project_usage(
    redis: Redis[bytes],
) -> None:
    project = await make_project(redis)
    new = await tenant_admin.create_key(redis, project.project_id, max_concurrent=2)
    assert new.record.max_concurrent == 2
    assert (await tenant_admin.get_key(redis, new.record.key_id)).max_concurrent == 2
    with pytest.raises(ValueError, match="max_concurrent"):
        await tenant_admin.create_key(redis, project.project_id, max_concurrent=0)
    await _router_state(redis, project.project_id, new.record.key_id)
    assert len(await redis.keys("*" + new.record.key_id)) == 4  # ratelimit, slots, usage, id
    await tenant_admin.delete_key(redis, new.record.key_id)
    assert await redis.keys("*" + new.record.key_id) == []
    used = await tenant_admin.usage(redis, project.project_id)
    assert used == {
        "project_id": project.project_id,
        "prompt_tokens": 4,
        "completion_tokens": 6,
        "requests": 1,
        "keys": [],
    }


async def test_usage_per_project_and_key(redis: Redis[bytes]) -> None:
    project = await make_project(redis)
    a, b = [await tenant_admin.create_key(redis, project.project_id) for _ in "ab"]
    limiter = RateLimiter(redis)
    await limiter.settle(a.record.key_id, project.project_id, (10, 20))
    await limiter.settle(a.record.key_id, project.project_id, (1, 2))
    used = await tenant_admin.usage(redis, project.project_id)
    counts = {k["key_id"]: (k["prompt_tokens"], k["completion_tokens"], k["requests"])
              for k in used["keys"]}  # fmt: skip
    assert counts == {a.record.key_id: (11, 22, 2), b.record.key_id: (0, 0, 0)}
    assert (used["prompt_tokens"], used["completion_tokens"], used["requests"]) == (11, 22, 2)
    with pytest.raises(NotFound):
        await tenant_admin.usage(redis, "proj_NOPE")


async def test_a_keyspace_keeps_deployments_apart(redis: Redis[bytes]) -> None:
    staging = Keyspace("staging:")
    project = await tenant_admin.create_project(redis, "Acme", keyspace=staging)
    pid = project.project_id
    await tenant_admin.create_endpoint(redis, pid, "chat", ["m"], keyspace=staging)
    new = await tenant_admin.create_key(redis, pid, keyspace=staging)
    assert all(name.startswith(b"staging:") for name in await redis.keys("*"))
    assert await tenant_admin.list_projects(redis) == []  # the empty prefix sees none of it
    with pytest.raises(NotFound):
        await get_project(redis, pid)
    assert await authenticate(redis, new.key, keyspace=staging) == new.record
    assert [k.key_id for k in await tenant_admin.list_keys(redis, pid, keyspace=staging)] == [
        new.record.key_id
    ]
    await tenant_admin.revoke_key(redis, new.record.key_id, keyspace=staging)
    await tenant_admin.delete_project(redis, pid, keyspace=staging)
    assert await redis.dbsize() == 0
