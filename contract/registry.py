"""The Redis worker registry: key names, record encoding and the few operations on them.

Both sides use this module (the worker writes, the router reads), so the schema lives in one
place. Layout, every name under the deployment's `Keyspace` prefix (empty: as shown):

    workers                    set of worker ids (may hold ids whose record has expired)
    worker:{id}                hash, one WorkerRecord; expires unless the heartbeat refreshes it
    model:{model}:workers      set of worker ids serving that model
    models                     hash model id -> unix seconds it was first served (never shrinks,
                               so the router can tell "unknown model" from "no worker up")
    registry:events            pub/sub channel; each message is one JSON event (see Event)

A worker killed with -9 stops refreshing its hash, which expires after the TTL; a worker that
registers prunes the dangling set members it finds (`prune_workers`), so routers only ever read
the registry. Routers also age records out themselves from their own clock, so a dead worker
leaves every snapshot within one TTL even while Redis keys linger.

Whoever can write Redis can write anything here, so a record is validated on both sides:
`WorkerRecord.validate` before a write, `WorkerRecord.from_mapping` and `Event.decode` on every
read. A record or event that fails raises InvalidRecord; readers skip it and carry on.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import orjson

from contract import prefixes as prefix_hashes
from contract.keyspace import DEFAULT_KEYSPACE, Keyspace

if TYPE_CHECKING:
    from redis.asyncio import Redis

WORKERS_KEY = "workers"
MODELS_KEY = "models"
EVENTS_CHANNEL = "registry:events"
SCHEMA_VERSION = 1

NAME_RE: Final = re.compile(r"[!-~]{1,256}")  # ids, models, devices: printable ASCII, no spaces
_URL_RE: Final = re.compile(r"[!-~]{1,2048}")  # urlsplit would silently drop tabs and newlines
_HOST_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,253}")
_PATH_RE: Final = re.compile(r"[A-Za-z0-9._~/%-]*")
_INT_RE: Final = re.compile(r"-?[0-9]{1,19}")
MAX_COUNT: Final = 2**31 - 1  # slots and queue lengths
MAX_MS: Final = 2**53 - 1  # timestamps stay exact as JSON numbers
MAX_REASON_CHARS: Final = 200


def worker_key(worker_id: str, keyspace: Keyspace = DEFAULT_KEYSPACE) -> str:
    return keyspace.key(f"worker:{worker_id}")


def model_workers_key(model: str, keyspace: Keyspace = DEFAULT_KEYSPACE) -> str:
    return keyspace.key(f"model:{model}:workers")


class InvalidRecord(ValueError):
    """A record or event that does not decode or breaks the schema; `worker_id` as it claimed
    ("" if none), `reason` says what is wrong without echoing the value."""

    def __init__(self, reason: str, worker_id: str = "") -> None:
        self.reason = reason[:MAX_REASON_CHARS]
        self.worker_id = worker_id[:MAX_REASON_CHARS]
        super().__init__(self.reason)


def url_problem(url: str, field: str = "url") -> str | None:
    """Why `url` cannot be a worker's base URL (http(s)://host[:port][/path]), or None."""
    if not _URL_RE.fullmatch(url):
        return f"{field}: expected 1 to 2048 printable ASCII characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"{field}: does not parse (a port outside 1..65535, or a broken [IPv6] host)"
    if parts.scheme not in ("http", "https"):
        return f"{field}: expected http:// or https://"
    if "@" in parts.netloc:
        return f"{field}: must not carry credentials"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return f"{field}: must not have a query or fragment"
    host = parts.hostname or ""
    bracketed = parts.netloc.startswith("[")
    if not (_is_ipv6(host) if bracketed else _HOST_RE.fullmatch(host)):
        return f"{field}: expected a host name or an IP address"
    if parts.netloc.endswith(":") or (port is not None and not 1 <= port <= 65535):
        return f"{field}: port outside 1..65535"
    if not _PATH_RE.fullmatch(parts.path):
        return f"{field}: the path has characters a base URL does not need"
    return None


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def name_problem(field: str, value: str) -> str | None:
    """Why `value` cannot be a worker id, model id or device name, or None."""
    if NAME_RE.fullmatch(value):
        return None
    return f"{field}: expected 1 to 256 printable ASCII characters, no spaces"


class WorkerState(enum.StrEnum):
    READY = "ready"
    DRAINING = "draining"


class WorkerApi(enum.StrEnum):
    """What speaks at a worker's URL: our worker (usage trailer, X-Prompt-Tokens) or any other
    OpenAI-compatible server behind a registrar (worker.agent), e.g. llama.cpp's llama-server."""

    XERO = "xero"
    OPENAI = "openai"


class EventType(enum.StrEnum):
    JOIN = "join"
    LOAD = "load"
    DRAIN = "drain"
    LEAVE = "leave"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    worker_id: str
    model: str
    url: str  # base URL, e.g. http://127.0.0.1:9001 (no trailing slash)
    state: WorkerState
    slots: int  # requests it runs at once
    running: int
    waiting: int
    max_queue: int  # waiting requests it accepts beyond its slots
    device: str  # "cpu" or "gpu"
    started_ms: int
    heartbeat_ms: int
    api: WorkerApi = WorkerApi.XERO  # records written before this field read as "xero"
    # Hashes of the conversation prefixes its KV cache holds (contract.prefixes); () if none
    # or unknown (records written before this field, upstreams that do not say).
    prefixes: tuple[str, ...] = ()
    version: int = SCHEMA_VERSION

    @property
    def queue_depth(self) -> int:
        return self.running + self.waiting

    def with_load(
        self, running: int, waiting: int, prefixes: tuple[str, ...] | None = None
    ) -> WorkerRecord:
        """This record with a new load (and cached prefixes, if given), stamped now."""
        kept = self.prefixes if prefixes is None else prefixes[: prefix_hashes.MAX_ADVERTISED]
        return replace(self, running=running, waiting=waiting, prefixes=kept, heartbeat_ms=now_ms())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prefixes": list(self.prefixes)}  # as its JSON decodes

    def to_hash(self) -> dict[str, str]:
        fields = {k: str(v) for k, v in asdict(self).items()}
        fields["prefixes"] = prefix_hashes.encode(self.prefixes)
        return fields

    def validate(self) -> WorkerRecord:
        """This record, or InvalidRecord saying what breaks the schema."""
        problem = self._problem()
        if problem is not None:
            raise InvalidRecord(problem, self.worker_id)
        return self

    def _problem(self) -> str | None:
        for field in ("worker_id", "model", "device"):
            problem = name_problem(field, getattr(self, field))
            if problem is not None:
                return problem
        if (problem := url_problem(self.url)) is not None:
            return problem
        if not 1 <= self.slots <= MAX_COUNT:
            return f"slots: expected 1..{MAX_COUNT}"
        for field in ("running", "waiting", "max_queue"):
            if not 0 <= getattr(self, field) <= MAX_COUNT:
                return f"{field}: expected 0..{MAX_COUNT}"
        for field in ("started_ms", "heartbeat_ms"):
            if not 0 <= getattr(self, field) <= MAX_MS:
                return f"{field}: expected 0..{MAX_MS}"
        if not isinstance(self.api, WorkerApi):
            return "api: unknown"
        if (problem := prefix_hashes.problem(self.prefixes)) is not None:
            return f"prefixes: {problem}"
        if self.version != SCHEMA_VERSION:
            return f"version: this reader knows schema {SCHEMA_VERSION} only"
        return None

    @classmethod
    def from_mapping(cls, raw: Mapping[Any, Any]) -> WorkerRecord:
        """Decode and validate a Redis hash (bytes or str) or an event's JSON dict; raise
        InvalidRecord (a ValueError) if it is not a valid record."""
        fields = _Fields(raw)
        return cls(
            worker_id=fields.text("worker_id"),
            model=fields.text("model"),
            url=fields.text("url"),
            state=fields.state(),
            slots=fields.integer("slots"),
            running=fields.integer("running"),
            waiting=fields.integer("waiting"),
            max_queue=fields.integer("max_queue"),
            device=fields.text("device"),
            started_ms=fields.integer("started_ms"),
            heartbeat_ms=fields.integer("heartbeat_ms"),
            api=fields.api(),
            prefixes=fields.prefixes(),
            version=fields.integer("version", SCHEMA_VERSION),
        ).validate()


class _Fields:
    """A record's raw fields, read one by one into their types with a reason for each failure."""

    def __init__(self, raw: Mapping[Any, Any]) -> None:
        self._raw: dict[str, Any] = {}
        for key, value in raw.items():
            if isinstance(key, bytes):
                key = key.decode(errors="replace")
            self._raw[str(key)] = value
        self.worker_id = _text(self._raw.get("worker_id")) or ""

    def _get(self, name: str) -> Any:
        if name not in self._raw:
            raise InvalidRecord(f"{name}: missing", self.worker_id)
        return self._raw[name]

    def text(self, name: str) -> str:
        text = _text(self._get(name))
        if text is None:
            raise InvalidRecord(f"{name}: expected a string", self.worker_id)
        return text

    def integer(self, name: str, default: int | None = None) -> int:
        value = self._raw.get(name, default) if default is not None else self._get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        text = _text(value)
        if text is None or not _INT_RE.fullmatch(text):
            raise InvalidRecord(f"{name}: expected an integer", self.worker_id)
        return int(text)

    def state(self) -> WorkerState:
        try:
            return WorkerState(self.text("state"))
        except ValueError:
            raise InvalidRecord("state: unknown", self.worker_id) from None

    def prefixes(self) -> tuple[str, ...]:
        raw = self._raw.get("prefixes")
        if raw is None:
            return ()
        if isinstance(raw, list):  # an event's JSON, or to_dict()
            if not all(isinstance(d, str) for d in raw):
                raise InvalidRecord("prefixes: expected strings", self.worker_id)
            raw = ",".join(raw)
        text = _text(raw)
        if text is None:
            raise InvalidRecord("prefixes: expected a string", self.worker_id)
        try:
            return prefix_hashes.decode(text)
        except ValueError as exc:
            raise InvalidRecord(f"prefixes: {exc}", self.worker_id) from None

    def api(self) -> WorkerApi:
        if "api" not in self._raw:
            return WorkerApi.XERO
        try:
            return WorkerApi(self.text("api"))
        except ValueError:
            raise InvalidRecord("api: unknown", self.worker_id) from None


def _text(value: Any) -> str | None:
    """A str or UTF-8 bytes as str; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    worker_id: str
    record: WorkerRecord | None  # None for LEAVE

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "type": self.type.value,
                "worker_id": self.worker_id,
                "worker": self.record.to_dict() if self.record else None,
            }
        )

    @classmethod
    def decode(cls, data: bytes | str) -> Event:
        """Decode one pub/sub message; InvalidRecord (a ValueError) if it is malformed."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise InvalidRecord("event: not JSON") from None
        if not isinstance(raw, dict):
            raise InvalidRecord("event: not a JSON object")
        worker_id = raw.get("worker_id")
        if not isinstance(worker_id, str) or name_problem("worker_id", worker_id):
            raise InvalidRecord("event: worker_id missing or malformed")
        kind = raw.get("type")
        try:
            event_type = EventType(kind if isinstance(kind, str) else "")
        except ValueError:
            raise InvalidRecord("event: unknown type", worker_id) from None
        if event_type is EventType.LEAVE:
            return cls(event_type, worker_id, None)
        rec = raw.get("worker")
        if not isinstance(rec, dict):
            raise InvalidRecord(f"event: a {event_type} event needs its worker record", worker_id)
        record = WorkerRecord.from_mapping(rec)
        if record.worker_id != worker_id:
            raise InvalidRecord("event: names another worker than its record", worker_id)
        return cls(event_type, worker_id, record)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a full read of the registry returns; `invalid`: what it skipped, and why."""

    workers: dict[str, WorkerRecord]
    models: dict[str, int]  # model id -> created (unix s)
    invalid: tuple[InvalidRecord, ...] = ()


async def publish_worker(
    redis: Redis[Any],
    record: WorkerRecord,
    ttl_ms: int,
    event: EventType = EventType.LOAD,
    *,
    keyspace: Keyspace = DEFAULT_KEYSPACE,
) -> None:
    """Write (or refresh) a worker's record, index it, and announce it, in one round trip."""
    record.validate()
    pipe = redis.pipeline(transaction=False)
    key = worker_key(record.worker_id, keyspace)
    pipe.hset(key, mapping=record.to_hash())  # type: ignore[arg-type]
    pipe.pexpire(key, ttl_ms)
    pipe.sadd(keyspace.key(WORKERS_KEY), record.worker_id)
    pipe.sadd(model_workers_key(record.model, keyspace), record.worker_id)
    pipe.hsetnx(keyspace.key(MODELS_KEY), record.model, str(record.started_ms // 1000))
    pipe.publish(keyspace.key(EVENTS_CHANNEL), Event(event, record.worker_id, record).encode())
    await pipe.execute()


async def remove_worker(
    redis: Redis[Any], worker_id: str, model: str, *, keyspace: Keyspace = DEFAULT_KEYSPACE
) -> None:
    pipe = redis.pipeline(transaction=False)
    pipe.delete(worker_key(worker_id, keyspace))
    pipe.srem(keyspace.key(WORKERS_KEY), worker_id)
    pipe.srem(model_workers_key(model, keyspace), worker_id)
    pipe.publish(keyspace.key(EVENTS_CHANNEL), Event(EventType.LEAVE, worker_id, None).encode())
    await pipe.execute()


async def read_snapshot(redis: Redis[Any], *, keyspace: Keyspace = DEFAULT_KEYSPACE) -> Snapshot:
    """Read every live, valid record (read-only: routers need no write access here)."""
    invalid: list[InvalidRecord] = []
    ids: list[str] = []
    for raw_id in await redis.smembers(keyspace.key(WORKERS_KEY)):
        worker_id = _text(raw_id)
        if worker_id is None:
            invalid.append(InvalidRecord("workers: a member is not UTF-8"))
        else:
            ids.append(worker_id)
    ids.sort()
    pipe = redis.pipeline(transaction=False)
    for worker_id in ids:
        pipe.hgetall(worker_key(worker_id, keyspace))
    pipe.hgetall(keyspace.key(MODELS_KEY))
    *hashes, models_raw = await pipe.execute()
    workers: dict[str, WorkerRecord] = {}
    for worker_id, raw in zip(ids, hashes, strict=True):
        if not raw:
            continue  # expired; the next worker to register prunes its id
        try:
            record = WorkerRecord.from_mapping(raw)
        except InvalidRecord as exc:
            invalid.append(InvalidRecord(exc.reason, worker_id))
            continue
        if record.worker_id != worker_id:
            invalid.append(InvalidRecord("worker_id: differs from its key's", worker_id))
            continue
        workers[worker_id] = record
    return Snapshot(workers=workers, models=_models(models_raw, invalid), invalid=tuple(invalid))


def _models(raw: Mapping[Any, Any], invalid: list[InvalidRecord]) -> dict[str, int]:
    models: dict[str, int] = {}
    for key, value in raw.items():
        model, created = _text(key) or "", _text(value) or ""
        if name_problem("model", model) or not _INT_RE.fullmatch(created):
            invalid.append(InvalidRecord("models: an entry is not model -> unix seconds"))
            continue
        models[model] = int(created)
    return models


async def prune_workers(redis: Redis[Any], *, keyspace: Keyspace = DEFAULT_KEYSPACE) -> list[str]:
    """Remove the ids of expired records from the index sets; the ids removed.

    Workers call this when they register (a restarted worker cleans up after the one it
    replaces). The model set of an expired id is unknown once its hash is gone, so every model
    set is swept (few keys, and only when something died).
    """
    ids = [_text(i) for i in await redis.smembers(keyspace.key(WORKERS_KEY))]
    known = [i for i in ids if i is not None]
    if not known:
        return []
    pipe = redis.pipeline(transaction=False)
    for worker_id in known:
        pipe.exists(worker_key(worker_id, keyspace))
    exists = await pipe.execute()
    dead = [w for w, alive in zip(known, exists, strict=True) if not alive]
    if not dead:
        return []
    models = [m for m in (_text(m) for m in await redis.hkeys(keyspace.key(MODELS_KEY))) if m]
    pipe = redis.pipeline(transaction=False)
    pipe.srem(keyspace.key(WORKERS_KEY), *dead)
    for model in models:
        pipe.srem(model_workers_key(model, keyspace), *dead)
    await pipe.execute()
    return dead
