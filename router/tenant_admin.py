"""What the admin tools do to tenancy: create, list and delete projects, endpoints and keys.

Routers never call these (they only read, see router.tenants); `python -m router admin` does.
Names and records are those of router.tenants.
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from contract.errors import NotFound
from contract.registry import now_ms
from router.tenants import (
    ENDPOINT_RE,
    PROJECTS_KEY,
    SLUG_RE,
    Endpoint,
    KeyRecord,
    NewKey,
    Project,
    apikey_id_key,
    apikey_key,
    find_endpoint,
    generate_key,
    get_project,
    hash_key,
    key_prefix,
    project_endpoints_key,
    project_keys_key,
    ratelimit_key,
    slugify,
    text,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

# Revoking must not recreate a key deleted meanwhile, and must keep the first revocation time.
_REVOKE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], 'revoked_ms', ARGV[1])
return 1
"""


class AlreadyExists(ValueError):
    """An endpoint name already taken in its project."""


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


async def _key_ids(redis: Redis[Any], project_id: str) -> list[str]:
    return sorted(text(k) for k in await redis.smembers(project_keys_key(project_id)))


# --- projects --------------------------------------------------------------------------------


async def create_project(redis: Redis[Any], name: str, *, slug: str | None = None) -> Project:
    name = name.strip()
    if not 0 < len(name) <= 200:
        raise ValueError("project name must be 1 to 200 characters")
    slug = slugify(name) if slug is None else slug
    if not SLUG_RE.fullmatch(slug):
        raise ValueError("slug must be 1 to 32 of a-z, 0-9 and '-', not starting or ending in '-'")
    alphabet = string.ascii_uppercase + string.digits
    for _ in range(5):  # 36**10 ids: a collision is all but impossible, but never overwrite
        project_id = "proj_" + "".join(secrets.choice(alphabet) for _ in range(10))
        project = Project(project_id, name, slug, now_ms())
        if await redis.hsetnx(PROJECTS_KEY, project_id, project.encode()):
            logger.info("created project %s", project_id)
            return project
    raise RuntimeError("could not allocate a project id")


async def list_projects(redis: Redis[Any]) -> list[Project]:
    raw = await redis.hgetall(PROJECTS_KEY)
    return sorted((Project.decode(v) for v in raw.values()), key=lambda p: p.created_ms)


async def delete_project(redis: Redis[Any], project_id: str) -> None:
    """Delete a project with its endpoints and keys (its keys stop working at once)."""
    project = await get_project(redis, project_id)
    key_ids = await _key_ids(redis, project.project_id)
    digests = await redis.mget([apikey_id_key(k) for k in key_ids]) if key_ids else []
    pipe = redis.pipeline(transaction=True)
    pipe.hdel(PROJECTS_KEY, project.project_id)
    pipe.delete(project_endpoints_key(project.project_id), project_keys_key(project.project_id))
    for key_id, digest in zip(key_ids, digests, strict=True):
        pipe.delete(apikey_id_key(key_id), ratelimit_key(key_id))
        if digest is not None:
            pipe.delete(apikey_key(text(digest)))
    await pipe.execute()
    logger.info("deleted project %s and %d keys", project.project_id, len(key_ids))


# --- endpoints -------------------------------------------------------------------------------


async def create_endpoint(
    redis: Redis[Any], project_id: str, name: str, models: Iterable[str]
) -> Endpoint:
    project = await get_project(redis, project_id)
    if not ENDPOINT_RE.fullmatch(name):
        raise ValueError("endpoint name must be a DNS label: 1 to 63 of a-z, 0-9 and '-'")
    served = tuple(dict.fromkeys(m.strip() for m in models))  # ordered, without duplicates
    if not served or any(not 0 < len(m) <= 256 for m in served):
        raise ValueError("an endpoint needs one or more model ids of 1 to 256 characters")
    endpoint = Endpoint(project.project_id, name, served, now_ms())
    key = project_endpoints_key(project.project_id)
    if not await redis.hsetnx(key, name, endpoint.encode()):
        raise AlreadyExists(f"endpoint `{name}` already exists in {project.project_id}")
    return endpoint


async def get_endpoint(redis: Redis[Any], project_id: str, name: str) -> Endpoint:
    endpoint = await find_endpoint(redis, project_id, name)
    if endpoint is None:
        raise NotFound(f"Endpoint `{name}` not found.")
    return endpoint


async def delete_endpoint(redis: Redis[Any], project_id: str, name: str) -> None:
    project = await get_project(redis, project_id)
    if not await redis.hdel(project_endpoints_key(project.project_id), name):
        raise NotFound(f"Endpoint `{name}` not found.")


# --- keys ------------------------------------------------------------------------------------


async def create_key(
    redis: Redis[Any],
    project_id: str,
    *,
    name: str = "",
    rpm: int | None = None,
    tpm: int | None = None,
    expires_ms: int | None = None,
) -> NewKey:
    """Mint a key; the returned NewKey.key is the only time the clear key exists."""
    _positive("rpm", rpm)
    _positive("tpm", tpm)
    created = now_ms()
    if expires_ms is not None and expires_ms <= created:
        raise ValueError("expiry must be in the future")
    project = await get_project(redis, project_id)
    key = generate_key(project.slug)
    digest = hash_key(key)
    record = KeyRecord(
        key_id="key_" + secrets.token_hex(8),
        project_id=project.project_id,
        prefix=key_prefix(key),
        name=name,
        created_ms=created,
        expires_ms=expires_ms,
        rpm=rpm,
        tpm=tpm,
    )
    pipe = redis.pipeline(transaction=True)
    pipe.hset(apikey_key(digest), mapping=record.to_hash(digest))  # type: ignore[arg-type]
    pipe.set(apikey_id_key(record.key_id), digest)
    pipe.sadd(project_keys_key(project.project_id), record.key_id)
    await pipe.execute()
    logger.info("created key %s for project %s", record.key_id, project.project_id)
    return NewKey(key, record)


async def list_keys(redis: Redis[Any], project_id: str) -> list[KeyRecord]:
    project = await get_project(redis, project_id)
    key_ids = await _key_ids(redis, project.project_id)
    if not key_ids:
        return []
    digests = await redis.mget([apikey_id_key(k) for k in key_ids])
    pipe = redis.pipeline(transaction=False)
    for digest in digests:
        if digest is not None:
            pipe.hgetall(apikey_key(text(digest)))
    records = [KeyRecord.from_hash(raw)[0] for raw in await pipe.execute() if raw]
    return sorted(records, key=lambda r: (r.created_ms, r.key_id))


async def _digest_of(redis: Redis[Any], key_id: str) -> str:
    digest = await redis.get(apikey_id_key(key_id))
    if digest is None:
        raise NotFound(f"Key `{key_id}` not found.")
    return text(digest)


async def get_key(redis: Redis[Any], key_id: str) -> KeyRecord:
    raw = await redis.hgetall(apikey_key(await _digest_of(redis, key_id)))
    if not raw:
        raise NotFound(f"Key `{key_id}` not found.")
    return KeyRecord.from_hash(raw)[0]


async def revoke_key(redis: Redis[Any], key_id: str) -> KeyRecord:
    """Mark a key revoked (idempotent); routers drop it within their cache TTL."""
    digest = await _digest_of(redis, key_id)
    revoke = redis.register_script(_REVOKE_LUA)
    if not await revoke(keys=[apikey_key(digest)], args=[now_ms()]):
        raise NotFound(f"Key `{key_id}` not found.")
    logger.info("revoked key %s", key_id)
    return await get_key(redis, key_id)


async def delete_key(redis: Redis[Any], key_id: str) -> None:
    digest = await _digest_of(redis, key_id)
    project_id = await redis.hget(apikey_key(digest), "project_id")
    pipe = redis.pipeline(transaction=True)
    pipe.delete(apikey_key(digest), apikey_id_key(key_id), ratelimit_key(key_id))
    if project_id is not None:
        pipe.srem(project_keys_key(text(project_id)), key_id)
    await pipe.execute()
    logger.info("deleted key %s", key_id)
