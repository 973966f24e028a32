"""Projects, endpoints and API keys in Redis: the schema, the admin operations, authentication.

Layout (every name is built by a function below, nowhere else):

    projects                      hash  project id -> Project JSON
    project:{pid}:endpoints       hash  endpoint name -> Endpoint JSON (HSETNX keeps names unique)
    project:{pid}:keys            set   key ids of the project
    apikey:{sha256}               hash  one KeyRecord plus key_hash, named by the key's digest so
                                        authenticating is one HGETALL
    apikey_id:{key_id}            string  the digest of that key (for revoke/delete by id)
    ratelimit:{key_id}            hash  the rate limiter's state (see router.ratelimit)

A key is `xero_<project slug>_<43 url-safe chars>`; only its SHA-256 is stored. A plain hash is
enough (no salt, no slow KDF) because the secret carries 256 random bits: nothing to brute-force.
It is shown once, at creation; listings show its non-secret prefix `xero_<slug>_<8 chars>`.

Routers authenticate through a KeyCache (one per app) so a request costs no Redis round trip
for a key seen in the last `ttl_s` seconds; a revocation therefore takes effect on every replica
within that TTL, which is capped at MAX_CACHE_TTL_S.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import string
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import orjson

from contract.errors import AuthenticationFailed, ModelNotFound, NotFound
from contract.registry import now_ms
from router.ttlcache import TtlCache

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

PROJECTS_KEY = "projects"
KEY_PREFIX = "xero_"
SECRET_BYTES = 32  # token_urlsafe(32) -> 43 chars, 256 bits
SHOWN_SECRET_CHARS = 8  # of the secret, in the listed prefix
MAX_KEY_CHARS = 256
MAX_CACHE_TTL_S = 5.0
DEFAULT_CACHE_TTL_S = 2.0
DEFAULT_CACHE_ENTRIES = 10_000

# Project ids are generated upper-case; DNS lower-cases hosts, so parsing upper-cases them back.
PROJECT_ID_RE = re.compile(r"proj_([A-Za-z0-9]{1,32})")
# Endpoint names and slugs are DNS labels, so DNS-based routing can carry them.
ENDPOINT_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
# A slug has no "_", so the first "_" after it starts the secret (which may contain "_").
API_KEY_RE = re.compile(r"xero_[a-z0-9-]{1,32}_[A-Za-z0-9_-]{32,200}")

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
# One message for malformed, unknown, revoked and expired: no oracle for which one it was.
INVALID_KEY = "Incorrect API key provided."


def project_endpoints_key(project_id: str) -> str:
    return f"project:{project_id}:endpoints"


def project_keys_key(project_id: str) -> str:
    return f"project:{project_id}:keys"


def apikey_key(digest: str) -> str:
    return f"apikey:{digest}"


def apikey_id_key(key_id: str) -> str:
    return f"apikey_id:{key_id}"


def ratelimit_key(key_id: str) -> str:
    return f"ratelimit:{key_id}"


class AlreadyExists(ValueError):
    """An endpoint name already taken in its project."""


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Project:
    project_id: str
    name: str
    slug: str  # the middle part of its keys
    created_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def decode(cls, data: bytes | str) -> Project:
        try:
            d = orjson.loads(data)
            return cls(str(d["project_id"]), str(d["name"]), str(d["slug"]), int(d["created_ms"]))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"bad project record: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class Endpoint:
    project_id: str
    name: str
    models: tuple[str, ...]
    created_ms: int

    def serves(self, model: str) -> bool:
        return model in self.models

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__} | {"models": list(self.models)}

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def decode(cls, data: bytes | str) -> Endpoint:
        try:
            d = orjson.loads(data)
            models = tuple(str(m) for m in d["models"])
            return cls(str(d["project_id"]), str(d["name"]), models, int(d["created_ms"]))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"bad endpoint record: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key's metadata; never its secret or its hash."""

    key_id: str
    project_id: str
    prefix: str  # xero_<slug>_<first 8 chars of the secret>: enough to recognise, not to use
    name: str
    created_ms: int
    expires_ms: int | None = None
    revoked_ms: int | None = None
    rpm: int | None = None  # requests per minute; None = unlimited
    tpm: int | None = None  # tokens per minute; None = unlimited

    def status(self, at_ms: int) -> str:
        if self.revoked_ms is not None:
            return "revoked"
        if self.expires_ms is not None and at_ms >= self.expires_ms:
            return "expired"
        return "active"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def to_hash(self, digest: str) -> dict[str, str]:
        # Absent optional fields are omitted, so revoking can be a plain HSETNX.
        fields = {k: str(v) for k, v in self.to_dict().items() if v is not None}
        return {**fields, "key_hash": digest}

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> tuple[KeyRecord, str]:
        """Decode a Redis hash into (record, stored digest); raise ValueError if bad."""
        d = {_text(k): _text(v) for k, v in raw.items()}

        def opt(name: str) -> int | None:
            return int(d[name]) if d.get(name) else None

        try:
            record = cls(
                key_id=d["key_id"],
                project_id=d["project_id"],
                prefix=d["prefix"],
                name=d.get("name", ""),
                created_ms=int(d["created_ms"]),
                expires_ms=opt("expires_ms"),
                revoked_ms=opt("revoked_ms"),
                rpm=opt("rpm"),
                tpm=opt("tpm"),
            )
            return record, d["key_hash"]
        except KeyError as exc:
            raise ValueError(f"bad key record: missing {exc}") from exc


@dataclass(frozen=True, slots=True)
class NewKey:
    key: str = field(repr=False)  # the clear key: hand it to the user once, never log it
    record: KeyRecord


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- pure helpers ----------------------------------------------------------------------------


def normalize_project_id(raw: str) -> str | None:
    match = PROJECT_ID_RE.fullmatch(raw)
    return f"proj_{match.group(1).upper()}" if match else None


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:32].strip("-")
    return slug or "project"


def generate_key(slug: str) -> str:
    return f"{KEY_PREFIX}{slug}_{secrets.token_urlsafe(SECRET_BYTES)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    slug_end = key.index("_", len(KEY_PREFIX))
    return key[: slug_end + 1 + SHOWN_SECRET_CHARS]


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


def parse_host(host: str, base_domain: str) -> tuple[str, str] | None:
    """`my-endpoint.proj_abc123.<base_domain>[:port]` -> ("proj_ABC123", "my-endpoint")."""
    host = host.strip().lower()
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        host = name
    host = host.rstrip(".")
    base = base_domain.strip().lower().strip(".")
    if not base or not host.endswith("." + base):
        return None
    labels = host[: -len(base) - 1].split(".")
    if len(labels) != 2 or not ENDPOINT_RE.fullmatch(labels[0]):
        return None
    project_id = normalize_project_id(labels[1])
    return (project_id, labels[0]) if project_id else None


def _project_id(raw: str) -> str:
    project_id = normalize_project_id(raw)
    if project_id is None:
        raise NotFound(f"Project `{raw}` not found.")
    return project_id


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


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


async def get_project(redis: Redis[Any], project_id: str) -> Project:
    project_id = _project_id(project_id)
    raw = await redis.hget(PROJECTS_KEY, project_id)
    if raw is None:
        raise NotFound(f"Project `{project_id}` not found.")
    return Project.decode(raw)


async def delete_project(redis: Redis[Any], project_id: str) -> None:
    """Delete a project with its endpoints and keys (its keys stop working at once)."""
    project = await get_project(redis, project_id)
    key_ids = sorted(_text(k) for k in await redis.smembers(project_keys_key(project.project_id)))
    digests = await redis.mget([apikey_id_key(k) for k in key_ids]) if key_ids else []
    pipe = redis.pipeline(transaction=True)
    pipe.hdel(PROJECTS_KEY, project.project_id)
    pipe.delete(project_endpoints_key(project.project_id), project_keys_key(project.project_id))
    for key_id, digest in zip(key_ids, digests, strict=True):
        pipe.delete(apikey_id_key(key_id), ratelimit_key(key_id))
        if digest is not None:
            pipe.delete(apikey_key(_text(digest)))
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


async def list_endpoints(redis: Redis[Any], project_id: str) -> list[Endpoint]:
    project = await get_project(redis, project_id)
    raw = await redis.hgetall(project_endpoints_key(project.project_id))
    return sorted((Endpoint.decode(v) for v in raw.values()), key=lambda e: e.name)


async def find_endpoint(redis: Redis[Any], project_id: str, name: str) -> Endpoint | None:
    """One HGET; None if the project or the endpoint does not exist."""
    normalized = normalize_project_id(project_id)
    if normalized is None or not ENDPOINT_RE.fullmatch(name):
        return None
    raw = await redis.hget(project_endpoints_key(normalized), name)
    return Endpoint.decode(raw) if raw is not None else None


async def get_endpoint(redis: Redis[Any], project_id: str, name: str) -> Endpoint:
    endpoint = await find_endpoint(redis, project_id, name)
    if endpoint is None:
        raise NotFound(f"Endpoint `{name}` not found.")
    return endpoint


async def endpoint_for_host(redis: Redis[Any], host: str, base_domain: str) -> Endpoint | None:
    """The endpoint a DNS-based Host names, or None."""
    parsed = parse_host(host, base_domain)
    return await find_endpoint(redis, *parsed) if parsed else None


async def delete_endpoint(redis: Redis[Any], project_id: str, name: str) -> None:
    project = await get_project(redis, project_id)
    if not await redis.hdel(project_endpoints_key(project.project_id), name):
        raise NotFound(f"Endpoint `{name}` not found.")


# --- keys ------------------------------------------------------------------------------------

# Revoking must not recreate a key deleted meanwhile, and must keep the first revocation time.
_REVOKE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], 'revoked_ms', ARGV[1])
return 1
"""


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
    key_ids = sorted(_text(k) for k in await redis.smembers(project_keys_key(project.project_id)))
    if not key_ids:
        return []
    digests = await redis.mget([apikey_id_key(k) for k in key_ids])
    pipe = redis.pipeline(transaction=False)
    for digest in digests:
        if digest is not None:
            pipe.hgetall(apikey_key(_text(digest)))
    records = [KeyRecord.from_hash(raw)[0] for raw in await pipe.execute() if raw]
    return sorted(records, key=lambda r: (r.created_ms, r.key_id))


async def _digest_of(redis: Redis[Any], key_id: str) -> str:
    digest = await redis.get(apikey_id_key(key_id))
    if digest is None:
        raise NotFound(f"Key `{key_id}` not found.")
    return _text(digest)


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
        pipe.srem(project_keys_key(_text(project_id)), key_id)
    await pipe.execute()
    logger.info("deleted key %s", key_id)


# --- authentication --------------------------------------------------------------------------


async def _load_key(redis: Redis[Any], digest: str) -> KeyRecord | None:
    raw = await redis.hgetall(apikey_key(digest))
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
    if record is None or record.status(at_ms) != "active":
        raise AuthenticationFailed(INVALID_KEY)
    return record


async def authenticate(
    redis: Redis[Any], token: str | None, *, at_ms: int | None = None
) -> KeyRecord:
    """The record of a usable key; AuthenticationFailed if missing, malformed, unknown,
    revoked or expired. Uncached: routers use KeyCache.authenticate."""
    record = await _load_key(redis, key_digest(token))
    return _usable(record, now_ms() if at_ms is None else at_ms)


# --- caches ----------------------------------------------------------------------------------


def _cache(ttl_s: float, max_entries: int, clock: Callable[[], float]) -> TtlCache[Any, Any]:
    if not 0 <= ttl_s <= MAX_CACHE_TTL_S:  # the bound is what makes a revocation prompt
        raise ValueError(f"cache ttl_s must be between 0 and {MAX_CACHE_TTL_S}, got {ttl_s}")
    return TtlCache(ttl_s, max_entries, clock)


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
    ) -> None:
        self._redis = redis
        self._wall_ms = wall_ms
        self.cache: TtlCache[str, KeyRecord | None] = _cache(ttl_s, max_entries, clock)

    async def authenticate(self, token: str | None) -> KeyRecord:
        digest = key_digest(token)  # malformed keys never reach Redis nor the cache
        record = await self.cache.get_or_load(digest, partial(_load_key, self._redis, digest))
        return _usable(record, self._wall_ms())


class EndpointCache:
    """find_endpoint() behind a TtlCache of (project id, name) -> endpoint (or None)."""

    def __init__(
        self,
        redis: Redis[Any],
        *,
        ttl_s: float = DEFAULT_CACHE_TTL_S,
        max_entries: int = DEFAULT_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self.cache: TtlCache[tuple[str, str], Endpoint | None] = _cache(ttl_s, max_entries, clock)

    async def find(self, project_id: str, name: str) -> Endpoint | None:
        load = partial(find_endpoint, self._redis, project_id, name)
        return await self.cache.get_or_load((project_id, name), load)

    async def resolve(self, key: KeyRecord, project_id: str, name: str, model: str) -> Endpoint:
        """The endpoint a request names (by path or Host), scoped to its key's project.

        Another project's key gets exactly the 404 of a project that does not exist, so keys
        cannot probe which projects exist; then 404 for an unknown endpoint, and 404
        model_not_found for a model the endpoint does not serve.
        """
        if normalize_project_id(project_id) != key.project_id:
            raise NotFound(f"Project `{project_id}` not found.")
        endpoint = await self.find(key.project_id, name)
        if endpoint is None:
            raise NotFound(f"Endpoint `{name}` not found.")
        if not endpoint.serves(model):
            raise ModelNotFound(model)
        return endpoint
