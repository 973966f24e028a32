"""Projects, endpoints and API keys in Redis: the schema, the records, the key format.

Layout (every name is built by a function below, nowhere else):

    projects                      hash  project id -> Project JSON
    project:{pid}:endpoints       hash  endpoint name -> Endpoint JSON (HSETNX keeps names unique)
    project:{pid}:keys            set   key ids of the project
    apikey:{sha256}               hash  one KeyRecord plus key_hash, named by the key's digest so
                                        authenticating is one HGETALL
    apikey_id:{key_id}            string  the digest of that key (for revoke/delete by id)
    ratelimit:{key_id}            hash  the rate limiter's state (see router.ratelimit)
    concurrency:{key_id}          zset  the key's requests in flight, scored by lease deadline
    usage:key:{key_id}            hash  tokens used by the key: prompt_tokens, completion_tokens,
    usage:project:{pid}           hash  requests; the same for the whole project

Every name sits under the deployment's `contract.keyspace.Keyspace` prefix (`--redis-prefix`):
the functions below take it first.

A key is `xero_<project slug>_<43 url-safe chars>`; only its SHA-256 is stored. A plain hash is
enough (no salt, no slow KDF) because the secret carries 256 random bits: nothing to brute-force.
It is shown once, at creation; listings show its non-secret prefix `xero_<slug>_<8 chars>`.

The reads routers make (a project's endpoints, one endpoint) are here too; what only the admin
tools do is in router.tenant_admin, and key authentication in router.apikeys.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from contract.errors import NotFound
from contract.keyspace import DEFAULT_KEYSPACE, Keyspace

if TYPE_CHECKING:
    from redis.asyncio import Redis

R = TypeVar("R")

KEY_PREFIX = "xero_"
SECRET_BYTES = 32  # token_urlsafe(32) -> 43 chars, 256 bits
SHOWN_SECRET_CHARS = 8  # of the secret, in the listed prefix
MAX_KEY_CHARS = 256

# Project ids are generated upper-case; DNS lower-cases hosts, so parsing upper-cases them back.
PROJECT_ID_RE = re.compile(r"proj_([A-Za-z0-9]{1,32})")
# Endpoint names and slugs are DNS labels, so DNS-based routing can carry them.
ENDPOINT_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
SLUG_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
# A slug has no "_", so the first "_" after it starts the secret (which may contain "_").
API_KEY_RE = re.compile(r"xero_[a-z0-9-]{1,32}_[A-Za-z0-9_-]{32,200}")


def projects_key(keyspace: Keyspace) -> str:
    return keyspace.key("projects")


def project_endpoints_key(keyspace: Keyspace, project_id: str) -> str:
    return keyspace.key(f"project:{project_id}:endpoints")


def project_keys_key(keyspace: Keyspace, project_id: str) -> str:
    return keyspace.key(f"project:{project_id}:keys")


def apikey_key(keyspace: Keyspace, digest: str) -> str:
    return keyspace.key(f"apikey:{digest}")


def apikey_id_key(keyspace: Keyspace, key_id: str) -> str:
    return keyspace.key(f"apikey_id:{key_id}")


def ratelimit_key(keyspace: Keyspace, key_id: str) -> str:
    return keyspace.key(f"ratelimit:{key_id}")


def concurrency_key(keyspace: Keyspace, key_id: str) -> str:
    return keyspace.key(f"concurrency:{key_id}")


def key_usage_key(keyspace: Keyspace, key_id: str) -> str:
    return keyspace.key(f"usage:key:{key_id}")


def project_usage_key(keyspace: Keyspace, project_id: str) -> str:
    return keyspace.key(f"usage:project:{project_id}")


def router_state_keys(keyspace: Keyspace, key_id: str) -> tuple[str, ...]:
    """What routers keep about one key: deleted with it."""
    return (
        ratelimit_key(keyspace, key_id),
        concurrency_key(keyspace, key_id),
        key_usage_key(keyspace, key_id),
    )


class KeyStatus(StrEnum):
    """What the admin CLI prints for a key; only ACTIVE keys authenticate."""

    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


class _JsonRecord:
    """A record stored as one JSON document in a Redis hash field."""

    __slots__: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def encode(self) -> bytes:
        return orjson.dumps(self.to_dict())


def _decoded(kind: str, data: bytes | str, build: Callable[[Any], R]) -> R:
    """build() applied to the decoded JSON; ValueError naming the kind for a bad record."""
    try:
        return build(orjson.loads(data))
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"bad {kind} record: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class Project(_JsonRecord):
    project_id: str
    name: str
    slug: str  # the middle part of its keys
    created_ms: int

    @classmethod
    def decode(cls, data: bytes | str) -> Project:
        def build(d: Any) -> Project:
            return cls(str(d["project_id"]), str(d["name"]), str(d["slug"]), int(d["created_ms"]))

        return _decoded("project", data, build)


@dataclass(frozen=True, slots=True)
class Endpoint(_JsonRecord):
    project_id: str
    name: str
    models: tuple[str, ...]
    created_ms: int

    def serves(self, model: str) -> bool:
        return model in self.models

    def to_dict(self) -> dict[str, Any]:
        return _JsonRecord.to_dict(self) | {"models": list(self.models)}

    @classmethod
    def decode(cls, data: bytes | str) -> Endpoint:
        def build(d: Any) -> Endpoint:
            models = tuple(str(m) for m in d["models"])
            return cls(str(d["project_id"]), str(d["name"]), models, int(d["created_ms"]))

        return _decoded("endpoint", data, build)


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
    max_concurrent: int | None = None  # requests in flight at once; None = unlimited

    @property
    def limited(self) -> bool:
        """Whether admission needs the rate-limit script (any limit set)."""
        return self.rpm is not None or self.tpm is not None or self.max_concurrent is not None

    def status(self, at_ms: int) -> KeyStatus:
        if self.revoked_ms is not None:
            return KeyStatus.REVOKED
        if self.expires_ms is not None and at_ms >= self.expires_ms:
            return KeyStatus.EXPIRED
        return KeyStatus.ACTIVE

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def to_hash(self, digest: str) -> dict[str, str]:
        # Absent optional fields are omitted, so revoking can be a plain HSETNX.
        fields = {k: str(v) for k, v in self.to_dict().items() if v is not None}
        return {**fields, "key_hash": digest}

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> tuple[KeyRecord, str]:
        """Decode a Redis hash into (record, stored digest); raise ValueError if bad."""
        d = {text(k): text(v) for k, v in raw.items()}

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
                max_concurrent=opt("max_concurrent"),
            )
            return record, d["key_hash"]
        except KeyError as exc:
            raise ValueError(f"bad key record: missing {exc}") from exc


@dataclass(frozen=True, slots=True)
class NewKey:
    key: str = field(repr=False)  # the clear key: hand it to the user once, never log it
    record: KeyRecord


def text(value: Any) -> str:
    """A Redis reply (bytes, or str on a decoding client) as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


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


# --- reads -----------------------------------------------------------------------------------


async def get_project(
    redis: Redis[Any], project_id: str, *, keyspace: Keyspace = DEFAULT_KEYSPACE
) -> Project:
    """The project; NotFound for an unknown or malformed id."""
    normalized = normalize_project_id(project_id)
    raw = None if normalized is None else await redis.hget(projects_key(keyspace), normalized)
    if raw is None:
        raise NotFound(f"Project `{normalized or project_id}` not found.")
    return Project.decode(raw)


async def list_endpoints(
    redis: Redis[Any], project_id: str, *, keyspace: Keyspace = DEFAULT_KEYSPACE
) -> list[Endpoint]:
    project = await get_project(redis, project_id, keyspace=keyspace)
    raw = await redis.hgetall(project_endpoints_key(keyspace, project.project_id))
    return sorted((Endpoint.decode(v) for v in raw.values()), key=lambda e: e.name)


async def find_endpoint(
    redis: Redis[Any], project_id: str, name: str, *, keyspace: Keyspace = DEFAULT_KEYSPACE
) -> Endpoint | None:
    """One HGET; None if the project or the endpoint does not exist."""
    normalized = normalize_project_id(project_id)
    if normalized is None or not ENDPOINT_RE.fullmatch(name):
        return None
    raw = await redis.hget(project_endpoints_key(keyspace, normalized), name)
    return Endpoint.decode(raw) if raw is not None else None
