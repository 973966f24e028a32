"""What the admin tools do to tenancy: create, list and delete projects, endpoints and keys.

Routers never call these on the request path (they only read, see router.tenants); the admin
CLI (router.admin) and the admin HTTP API (router.admin_api) do, and both render what these
return, so they validate alike and fail alike: bad input raises Invalid (400), a taken name
AlreadyExists (409), an unknown id contract.errors.NotFound (404). Invalid and AlreadyExists are
also ValueErrors. Names and records are those of router.tenants; every function takes the
deployment's keyspace (`--redis-prefix`), the empty prefix by default.
"""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from contract.errors import ApiError, InvalidRequest, NotFound
from contract.keyspace import DEFAULT_KEYSPACE, Keyspace
from contract.registry import now_ms
from router.tenants import (
    ENDPOINT_RE,
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
    key_usage_key,
    project_endpoints_key,
    project_keys_key,
    project_usage_key,
    projects_key,
    router_state_keys,
    slugify,
    text,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

KS = DEFAULT_KEYSPACE
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "requests")

logger = logging.getLogger(__name__)

# Revoking must not recreate a key deleted meanwhile, and must keep the first revocation time.
_REVOKE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], 'revoked_ms', ARGV[1])
return 1
"""


class Invalid(InvalidRequest, ValueError):
    """A value the admin tools refuse; `param` names the field."""


class AlreadyExists(ApiError, ValueError):
    """An endpoint name already taken in its project."""

    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise Invalid(f"{name} must be >= 1, got {value}", param=name)


async def _key_ids(redis: Redis[Any], project_id: str, keyspace: Keyspace) -> list[str]:
    return sorted(text(k) for k in await redis.smembers(project_keys_key(keyspace, project_id)))


# --- projects --------------------------------------------------------------------------------


async def create_project(
    redis: Redis[Any], name: str, *, slug: str | None = None, keyspace: Keyspace = KS
) -> Project:
    name = name.strip()
    if not 0 < len(name) <= 200:
        raise Invalid("project name must be 1 to 200 characters", param="name")
    slug = slugify(name) if slug is None else slug
    if not SLUG_RE.fullmatch(slug):
        raise Invalid(
            "slug must be 1 to 32 of a-z, 0-9 and '-', not starting or ending in '-'", param="slug"
        )
    alphabet = string.ascii_uppercase + string.digits
    for _ in range(5):  # 36**10 ids: a collision is all but impossible, but never overwrite
        project_id = "proj_" + "".join(secrets.choice(alphabet) for _ in range(10))
        project = Project(project_id, name, slug, now_ms())
        if await redis.hsetnx(projects_key(keyspace), project_id, project.encode()):
            logger.info("created project %s", project_id)
            return project
    raise RuntimeError("could not allocate a project id")


async def list_projects(redis: Redis[Any], *, keyspace: Keyspace = KS) -> list[Project]:
    raw = await redis.hgetall(projects_key(keyspace))
    return sorted((Project.decode(v) for v in raw.values()), key=lambda p: p.created_ms)


async def delete_project(redis: Redis[Any], project_id: str, *, keyspace: Keyspace = KS) -> None:
    """Delete a project with its endpoints, keys and usage (its keys stop working at once)."""
    ks = keyspace
    pid = (await get_project(redis, project_id, keyspace=ks)).project_id
    key_ids = await _key_ids(redis, pid, ks)
    digests = await redis.mget([apikey_id_key(ks, k) for k in key_ids]) if key_ids else []
    pipe = redis.pipeline(transaction=True)
    pipe.hdel(projects_key(ks), pid)
    pipe.delete(
        project_endpoints_key(ks, pid), project_keys_key(ks, pid), project_usage_key(ks, pid)
    )
    for key_id, digest in zip(key_ids, digests, strict=True):
        pipe.delete(apikey_id_key(ks, key_id), *router_state_keys(ks, key_id))
        if digest is not None:
            pipe.delete(apikey_key(ks, text(digest)))
    await pipe.execute()
    logger.info("deleted project %s and %d keys", pid, len(key_ids))


# --- endpoints -------------------------------------------------------------------------------


async def create_endpoint(
    redis: Redis[Any],
    project_id: str,
    name: str,
    models: Iterable[str],
    *,
    keyspace: Keyspace = KS,
) -> Endpoint:
    project = await get_project(redis, project_id, keyspace=keyspace)
    if not ENDPOINT_RE.fullmatch(name):
        raise Invalid(
            "endpoint name must be a DNS label: 1 to 63 of a-z, 0-9 and '-'", param="name"
        )
    served = tuple(dict.fromkeys(m.strip() for m in models))  # ordered, without duplicates
    if not served or any(not 0 < len(m) <= 256 for m in served):
        raise Invalid(
            "an endpoint needs one or more model ids of 1 to 256 characters", param="models"
        )
    endpoint = Endpoint(project.project_id, name, served, now_ms())
    key = project_endpoints_key(keyspace, project.project_id)
    if not await redis.hsetnx(key, name, endpoint.encode()):
        raise AlreadyExists(
            f"endpoint `{name}` already exists in {project.project_id}", param="name"
        )
    return endpoint


async def get_endpoint(
    redis: Redis[Any], project_id: str, name: str, *, keyspace: Keyspace = KS
) -> Endpoint:
    endpoint = await find_endpoint(redis, project_id, name, keyspace=keyspace)
    if endpoint is None:
        raise NotFound(f"Endpoint `{name}` not found.")
    return endpoint


async def delete_endpoint(
    redis: Redis[Any], project_id: str, name: str, *, keyspace: Keyspace = KS
) -> None:
    project = await get_project(redis, project_id, keyspace=keyspace)
    if not await redis.hdel(project_endpoints_key(keyspace, project.project_id), name):
        raise NotFound(f"Endpoint `{name}` not found.")


# --- keys ------------------------------------------------------------------------------------


async def create_key(
    redis: Redis[Any],
    project_id: str,
    *,
    name: str = "",
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrent: int | None = None,
    expires_ms: int | None = None,
    keyspace: Keyspace = KS,
) -> NewKey:
    """Mint a key; the returned NewKey.key is the only time the clear key exists."""
    _positive("rpm", rpm)
    _positive("tpm", tpm)
    _positive("max_concurrent", max_concurrent)
    created = now_ms()
    if expires_ms is not None and expires_ms <= created:
        raise Invalid("expiry must be in the future", param="expires_ms")
    project = await get_project(redis, project_id, keyspace=keyspace)
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
        max_concurrent=max_concurrent,
    )
    ks = keyspace
    pipe = redis.pipeline(transaction=True)
    pipe.hset(apikey_key(ks, digest), mapping=record.to_hash(digest))  # type: ignore[arg-type]
    pipe.set(apikey_id_key(ks, record.key_id), digest)
    pipe.sadd(project_keys_key(ks, project.project_id), record.key_id)
    await pipe.execute()
    logger.info("created key %s for project %s", record.key_id, project.project_id)
    return NewKey(key, record)


async def list_keys(
    redis: Redis[Any], project_id: str, *, keyspace: Keyspace = KS
) -> list[KeyRecord]:
    project = await get_project(redis, project_id, keyspace=keyspace)
    key_ids = await _key_ids(redis, project.project_id, keyspace)
    if not key_ids:
        return []
    digests = await redis.mget([apikey_id_key(keyspace, k) for k in key_ids])
    pipe = redis.pipeline(transaction=False)
    for digest in digests:
        if digest is not None:
            pipe.hgetall(apikey_key(keyspace, text(digest)))
    records = [KeyRecord.from_hash(raw)[0] for raw in await pipe.execute() if raw]
    return sorted(records, key=lambda r: (r.created_ms, r.key_id))


async def _digest_of(redis: Redis[Any], key_id: str, keyspace: Keyspace) -> str:
    digest = await redis.get(apikey_id_key(keyspace, key_id))
    if digest is None:
        raise NotFound(f"Key `{key_id}` not found.")
    return text(digest)


async def get_key(redis: Redis[Any], key_id: str, *, keyspace: Keyspace = KS) -> KeyRecord:
    raw = await redis.hgetall(apikey_key(keyspace, await _digest_of(redis, key_id, keyspace)))
    if not raw:
        raise NotFound(f"Key `{key_id}` not found.")
    return KeyRecord.from_hash(raw)[0]


async def revoke_key(redis: Redis[Any], key_id: str, *, keyspace: Keyspace = KS) -> KeyRecord:
    """Mark a key revoked (idempotent); routers drop it within their cache TTL."""
    digest = await _digest_of(redis, key_id, keyspace)
    revoke = redis.register_script(_REVOKE_LUA)
    if not await revoke(keys=[apikey_key(keyspace, digest)], args=[now_ms()]):
        raise NotFound(f"Key `{key_id}` not found.")
    logger.info("revoked key %s", key_id)
    return await get_key(redis, key_id, keyspace=keyspace)


async def delete_key(redis: Redis[Any], key_id: str, *, keyspace: Keyspace = KS) -> None:
    """Delete a key and what routers keep about it; its tokens stay in the project's usage."""
    ks = keyspace
    digest = await _digest_of(redis, key_id, ks)
    project_id = await redis.hget(apikey_key(ks, digest), "project_id")
    pipe = redis.pipeline(transaction=True)
    pipe.delete(apikey_key(ks, digest), apikey_id_key(ks, key_id), *router_state_keys(ks, key_id))
    if project_id is not None:
        pipe.srem(project_keys_key(ks, text(project_id)), key_id)
    await pipe.execute()
    logger.info("deleted key %s", key_id)


# --- usage -----------------------------------------------------------------------------------


def _counts(raw: dict[Any, Any]) -> dict[str, int]:
    values = {text(k): int(v) for k, v in raw.items()}
    return {name: values.get(name, 0) for name in USAGE_FIELDS}


async def usage(redis: Redis[Any], project_id: str, *, keyspace: Keyspace = KS) -> dict[str, Any]:
    """The tokens routers counted (router.ratelimit's settle): the project's, then each key's."""
    project = await get_project(redis, project_id, keyspace=keyspace)
    key_ids = await _key_ids(redis, project.project_id, keyspace)
    pipe = redis.pipeline(transaction=False)
    pipe.hgetall(project_usage_key(keyspace, project.project_id))
    for key_id in key_ids:
        pipe.hgetall(key_usage_key(keyspace, key_id))
    project_raw, *keys_raw = await pipe.execute()
    return {
        "project_id": project.project_id,
        **_counts(project_raw),
        "keys": [
            {"key_id": key_id, **_counts(raw)}
            for key_id, raw in zip(key_ids, keys_raw, strict=True)
        ],
    }


async def key_usage(redis: Redis[Any], key_id: str, *, keyspace: Keyspace = KS) -> dict[str, Any]:
    """One key's tokens; NotFound once the key is deleted (its tokens stay in the project's)."""
    record = await get_key(redis, key_id, keyspace=keyspace)
    raw = await redis.hgetall(key_usage_key(keyspace, record.key_id))
    return {"key_id": record.key_id, "project_id": record.project_id, **_counts(raw)}


# --- what the CLI prints and the API answers -------------------------------------------------


def key_view(record: KeyRecord) -> dict[str, Any]:
    """A key's metadata and its status now; never its secret or its hash."""
    return {**record.to_dict(), "status": record.status(now_ms())}


def new_key_view(new: NewKey) -> dict[str, Any]:
    """The one answer that holds the clear key."""
    return {"key": new.key, **key_view(new.record)}


def expiry_ms(expires_in_s: int | None) -> int | None:
    """The unix ms a key made now with this lifetime expires at (None: never)."""
    if expires_in_s is None:
        return None
    _positive("expires_in_s", expires_in_s)
    return now_ms() + expires_in_s * 1000


async def keys_with_usage(
    redis: Redis[Any], project_id: str, *, keyspace: Keyspace = KS
) -> list[dict[str, Any]]:
    """A project's keys (key_view), each with the tokens it used."""
    keys = await list_keys(redis, project_id, keyspace=keyspace)
    used = await usage(redis, project_id, keyspace=keyspace)
    by_id = {counts.pop("key_id"): counts for counts in used["keys"]}
    zero = dict.fromkeys(USAGE_FIELDS, 0)  # a key made between the two reads
    return [{**key_view(k), **by_id.get(k.key_id, zero)} for k in keys]
