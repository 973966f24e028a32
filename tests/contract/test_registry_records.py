"""contract.registry validation: what a reader accepts, what it refuses and why, fuzzed; and
the key prefix that keeps two deployments on one Redis apart."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from contract.keyspace import Keyspace
from contract.registry import (
    EVENTS_CHANNEL,
    MODELS_KEY,
    WORKERS_KEY,
    Event,
    EventType,
    InvalidRecord,
    WorkerRecord,
    prune_workers,
    publish_worker,
    read_snapshot,
    remove_worker,
    url_problem,
    worker_key,
)
from tests.waits import eventually

from .test_registry import TTL_MS, record

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9001",
        "https://worker-0.workers.llm.svc.cluster.local:9001",
        "http://worker_1:80",
        "http://[::1]:9001",
        "http://worker",  # the scheme's port
        "http://gateway:8080/pool/worker-1",  # a path prefix
    ],
)
def test_good_urls(url: str) -> None:
    assert url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:99999", "does not parse"),
        ("http://127.0.0.1:0", "port outside"),
        ("http://127.0.0.1:", "port outside"),
        ("http://[::1:80", "does not parse"),
        ("http://[1.2.3.4]:80", "does not parse"),
        ("ftp://h:1", "http:// or https://"),
        ("127.0.0.1:9001", "http:// or https://"),
        ("http://", "host"),
        ("http://:80", "host"),
        ("http://ex%41mple:80", "host"),
        ("http://user:pw@h:1", "credentials"),
        ("http://h:1?x=1", "query"),
        ("http://h:1#f", "query"),
        ("http://h:1/a b", "printable"),
        ("http://h\n:1", "printable"),
        ("", "printable"),
        ("http://h:1/" + "a" * 2048, "printable"),
        ("http://h:1/a;b", "path"),
    ],
)
def test_bad_urls(url: str, problem: str) -> None:
    found = url_problem(url)
    assert found is not None and found.startswith("url: ") and problem in found


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"url": "http://127.0.0.1:99999"}, "url: does not parse"),
        ({"worker_id": ""}, "worker_id: "),
        ({"worker_id": "a b"}, "worker_id: "),
        ({"model": ""}, "model: "),
        ({"model": "é"}, "model: "),
        ({"device": "x" * 257}, "device: "),
        ({"slots": 0}, "slots: "),
        ({"slots": 2**31}, "slots: "),
        ({"running": -1}, "running: "),
        ({"waiting": -1}, "waiting: "),
        ({"max_queue": -5}, "max_queue: "),
        ({"started_ms": -1}, "started_ms: "),
        ({"heartbeat_ms": 2**60}, "heartbeat_ms: "),
        ({"version": 2}, "version: "),
    ],
)
def test_validate_names_the_bad_field_and_the_worker(change: dict[str, Any], problem: str) -> None:
    bad = replace(record(), **change)
    with pytest.raises(InvalidRecord) as caught:
        bad.validate()
    assert caught.value.reason.startswith(problem)
    assert caught.value.worker_id == bad.worker_id
    with pytest.raises(InvalidRecord):
        WorkerRecord.from_mapping(bad.to_hash())
    with pytest.raises(InvalidRecord):
        WorkerRecord.from_mapping(bad.to_dict())


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"slots": True}, "slots: expected an integer"),
        ({"slots": 4.0}, "slots: expected an integer"),
        ({"slots": "4.5"}, "slots: expected an integer"),
        ({"slots": "9" * 400}, "slots: expected an integer"),
        ({"slots": None}, "slots: expected an integer"),
        ({"model": ["m"]}, "model: expected a string"),
        ({"model": 7}, "model: expected a string"),
        ({"state": "sleeping"}, "state: unknown"),
        ({"url": b"\xff"}, "url: expected a string"),
    ],
)
def test_json_values_of_the_wrong_type_are_refused(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        WorkerRecord.from_mapping(record().to_dict() | change)
    assert caught.value.reason == problem
    assert caught.value.worker_id == "w1"


def test_integers_arrive_as_json_numbers_or_decimal_text() -> None:
    rec = record()
    assert WorkerRecord.from_mapping(rec.to_dict() | {"slots": "4"}) == rec
    assert WorkerRecord.from_mapping(rec.to_hash() | {"slots": 4}) == rec


def _event(**fields: Any) -> bytes:
    base = {"type": "load", "worker_id": "w1", "worker": record().to_dict()}
    return orjson.dumps(base | fields)


@pytest.mark.parametrize(
    ("data", "problem", "worker_id"),
    [
        (b"\xff\xfe", "event: not JSON", ""),
        (b"[" * 5000, "event: not JSON", ""),
        (_event(worker_id=7), "event: worker_id missing or malformed", ""),
        (_event(worker_id="a b"), "event: worker_id missing or malformed", ""),
        (_event(type=None), "event: unknown type", "w1"),
        (_event(type=["load"]), "event: unknown type", "w1"),
        (_event(worker=None), "event: a load event needs its worker record", "w1"),
        (_event(type="join", worker={}), "worker_id: missing", ""),
        (_event(worker_id="w2"), "event: names another worker than its record", "w2"),
        (
            _event(worker=record(url="http://127.0.0.1:99999").to_dict()),
            "url: does not parse (a port outside 1..65535, or a broken [IPv6] host)",
            "w1",
        ),
    ],
)
def test_bad_events_say_why(data: bytes, problem: str, worker_id: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        Event.decode(data)
    assert (caught.value.reason, caught.value.worker_id) == (problem, worker_id)


def test_a_leave_needs_no_record() -> None:
    assert Event.decode(_event(type="leave", worker=None)) == Event(EventType.LEAVE, "w1", None)


# -- fuzz: a reader gets a valid record or InvalidRecord, never anything else -----------------

FIELDS = [f for f in record().to_dict() if f != "version"] + ["version"]
scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=30)
    | st.sampled_from(["", "0", "-1", "4", "ready", "http://127.0.0.1:99999", "http://h:1"])
)
json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)  # what orjson writes
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@st.composite
def mangled_records(draw: st.DrawFn) -> dict[Any, Any]:
    """A valid record's fields with some dropped, some replaced by anything, keys as str or
    bytes (a Redis hash or an event's JSON)."""
    fields: dict[Any, Any] = dict(record().to_hash())
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        if draw(st.booleans()):
            fields.pop(name, None)
        else:
            fields[name] = draw(scalar)
    if draw(st.booleans()):
        fields = {k.encode(): v for k, v in fields.items()}
    return fields


@FUZZ
@given(mangled_records())
def test_fuzz_record_decoding(raw: dict[Any, Any]) -> None:
    try:
        decoded = WorkerRecord.from_mapping(raw)
    except InvalidRecord as exc:
        assert exc.reason and len(exc.reason) <= 200
        return
    assert decoded.validate() is decoded
    assert WorkerRecord.from_mapping(decoded.to_hash()) == decoded


events = st.one_of(
    st.binary(max_size=200),
    st.builds(orjson.dumps, json_value),
    st.builds(
        lambda t, w, r: orjson.dumps({"type": t, "worker_id": w, "worker": r}),
        st.sampled_from([*EventType, "explode"]) | json_value,
        st.just("w1") | json_value,
        mangled_records().map(lambda r: {_text(k): _jsonable(v) for k, v in r.items()})
        | json_value,
    ),
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        return str(value)
    return value


@FUZZ
@given(events)
def test_fuzz_event_decoding(data: bytes) -> None:
    try:
        event = Event.decode(data)
    except InvalidRecord:
        return
    assert (event.record is None) == (event.type is EventType.LEAVE)
    if event.record is not None:
        assert event.record.worker_id == event.worker_id
        assert event.record.validate() is event.record


# -- writes -----------------------------------------------------------------------------------


async def test_an_invalid_record_is_never_written(redis: Redis[bytes]) -> None:
    with pytest.raises(InvalidRecord):
        await publish_worker(redis, record(url="http://127.0.0.1:99999"), TTL_MS)
    assert await redis.keys("*") == []


async def test_a_bad_entry_is_skipped_and_the_rest_of_the_read_kept(redis: Redis[bytes]) -> None:
    good = record("good")
    await publish_worker(redis, good, TTL_MS)
    await redis.hset(worker_key("alias"), mapping=record("good").to_hash())  # type: ignore[arg-type]
    bad_port = record("port").to_hash() | {"url": "http://h:0"}
    await redis.hset(worker_key("port"), mapping=bad_port)  # type: ignore[arg-type]
    await redis.sadd(WORKERS_KEY, "alias", "port", b"\xff")
    await redis.hset(MODELS_KEY, mapping={"junk": "yesterday", "a model": "1"})

    snapshot = await read_snapshot(redis)

    assert snapshot.workers == {"good": good}
    assert snapshot.models == {"smollm2": 1_700_000_123}
    assert sorted((i.worker_id, i.reason) for i in snapshot.invalid) == [
        ("", "models: an entry is not model -> unix seconds"),
        ("", "models: an entry is not model -> unix seconds"),
        ("", "workers: a member is not UTF-8"),
        ("alias", "worker_id: differs from its key's"),
        ("port", "url: port outside 1..65535"),
    ]


# -- two deployments on one Redis -------------------------------------------------------------

STAGING, PRODUCTION = Keyspace("staging:"), Keyspace()


async def test_two_prefixes_share_one_redis_without_seeing_each_other(redis: Redis[bytes]) -> None:
    await publish_worker(redis, record("s1"), TTL_MS, keyspace=STAGING)
    await publish_worker(redis, record("p1", model="qwen"), TTL_MS, keyspace=PRODUCTION)

    staging = await read_snapshot(redis, keyspace=STAGING)
    production = await read_snapshot(redis, keyspace=PRODUCTION)
    assert (list(staging.workers), list(staging.models)) == (["s1"], ["smollm2"])
    assert (list(production.workers), list(production.models)) == (["p1"], ["qwen"])
    assert await redis.exists("staging:worker:s1", "staging:workers", "worker:p1", "workers") == 4

    # Pruning under one prefix leaves the other's index alone.
    await redis.delete("worker:p1")
    await redis.delete("staging:worker:s1")
    assert await prune_workers(redis, keyspace=STAGING) == ["s1"]
    assert await redis.smembers(WORKERS_KEY) == {b"p1"}

    await remove_worker(redis, "s1", "smollm2", keyspace=STAGING)
    assert await redis.smembers(WORKERS_KEY) == {b"p1"}


async def test_each_prefix_has_its_own_events_channel(redis: Redis[bytes]) -> None:
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(STAGING.key(EVENTS_CHANNEL))

    async def subscribed() -> bool:
        [(_, subscribers)] = await redis.pubsub_numsub(STAGING.key(EVENTS_CHANNEL))
        return bool(subscribers)

    try:
        await eventually(subscribed)
        await publish_worker(redis, record("p1"), TTL_MS)  # production's channel
        await publish_worker(redis, record("s1"), TTL_MS, keyspace=STAGING)
        heard: list[str] = []
        for _ in range(20):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                heard.append(Event.decode(message["data"]).worker_id)
            elif heard:
                break
            await asyncio.sleep(0)
        assert heard == ["s1"]
        assert STAGING.key(EVENTS_CHANNEL) == "staging:registry:events"
    finally:
        await pubsub.aclose()  # type: ignore[attr-defined]  # types-redis predates it
