"""The tenancy schema: records and their encodings, the key format, the reads routers make."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from contract.errors import NotFound
from contract.keyspace import Keyspace
from router import tenant_admin
from router.tenants import (
    API_KEY_RE,
    Endpoint,
    KeyRecord,
    KeyStatus,
    Project,
    apikey_id_key,
    apikey_key,
    concurrency_key,
    find_endpoint,
    generate_key,
    get_project,
    hash_key,
    key_prefix,
    key_usage_key,
    list_endpoints,
    normalize_project_id,
    project_endpoints_key,
    project_keys_key,
    project_usage_key,
    projects_key,
    ratelimit_key,
    router_state_keys,
    slugify,
)


def test_records_round_trip() -> None:
    project = Project("proj_ABC", "Acme", "acme", 1)
    assert Project.decode(project.encode()) == project
    endpoint = Endpoint("proj_ABC", "chat", ("m1", "m2"), 2)
    assert Endpoint.decode(endpoint.encode()) == endpoint
    assert endpoint.to_dict()["models"] == ["m1", "m2"]
    assert endpoint.serves("m2") and not endpoint.serves("m3")
    for bad in (b"{", b"{}", b'{"project_id": "p"}'):
        with pytest.raises(ValueError, match="bad project record"):
            Project.decode(bad)
        with pytest.raises(ValueError, match="bad endpoint record"):
            Endpoint.decode(bad)


def test_key_record_hash_omits_absent_fields_and_round_trips() -> None:
    record = KeyRecord("key_1", "proj_ABC", "xero_acme_abcdefgh", "ci", 10, rpm=60)
    stored = record.to_hash("digest")
    assert "revoked_ms" not in stored and "tpm" not in stored  # so revoking can be HSETNX
    raw = {k.encode(): v.encode() for k, v in stored.items()}  # as Redis returns it
    assert KeyRecord.from_hash(raw) == (record, "digest")
    del raw[b"key_hash"]
    with pytest.raises(ValueError, match="missing"):
        KeyRecord.from_hash(raw)


def test_key_record_limits() -> None:
    bare = KeyRecord("key_1", "proj_ABC", "p", "", 0)
    assert not bare.limited  # admission needs no Redis call
    for limits in ({"rpm": 1}, {"tpm": 1}, {"max_concurrent": 1}):
        record = KeyRecord("key_1", "proj_ABC", "p", "", 0, **limits)
        assert record.limited
        raw = {k.encode(): v.encode() for k, v in record.to_hash("d").items()}
        assert KeyRecord.from_hash(raw) == (record, "d")


def test_every_name_sits_under_the_keyspace() -> None:
    ks = Keyspace("prod:")
    names = [
        projects_key(ks),
        project_endpoints_key(ks, "proj_A"),
        project_keys_key(ks, "proj_A"),
        apikey_key(ks, "abc"),
        apikey_id_key(ks, "key_1"),
        project_usage_key(ks, "proj_A"),
        *router_state_keys(ks, "key_1"),
    ]
    assert names == [
        "prod:projects",
        "prod:project:proj_A:endpoints",
        "prod:project:proj_A:keys",
        "prod:apikey:abc",
        "prod:apikey_id:key_1",
        "prod:usage:project:proj_A",
        "prod:ratelimit:key_1",
        "prod:concurrency:key_1",
        "prod:usage:key:key_1",
    ]
    assert ratelimit_key(Keyspace(), "key_1") == "ratelimit:key_1"
    assert concurrency_key(ks, "k") == "prod:concurrency:k" and key_usage_key(ks, "k").startswith(
        "prod:usage:key:"
    )


def test_key_status() -> None:
    # The values are what the admin CLI prints and --json carries.
    assert [s.value for s in KeyStatus] == ["active", "revoked", "expired"]
    record = KeyRecord("key_1", "proj_ABC", "p", "", 0, expires_ms=100)
    assert record.status(99) is KeyStatus.ACTIVE
    assert record.status(100) is KeyStatus.EXPIRED
    revoked = KeyRecord("key_1", "proj_ABC", "p", "", 0, expires_ms=100, revoked_ms=50)
    assert revoked.status(0) is KeyStatus.REVOKED


def test_key_format() -> None:
    key = generate_key("my-project")
    assert API_KEY_RE.fullmatch(key) and key.startswith("xero_my-project_")
    assert key_prefix(key) == key[: len("xero_my-project_") + 8]
    assert hash_key(key) == hash_key(key) != hash_key(generate_key("my-project"))
    assert len(hash_key(key)) == 64


def test_names() -> None:
    assert normalize_project_id("proj_abc123") == "proj_ABC123"
    for bad in ("abc123", "proj_", "proj_a-b", "PROJ_abc"):
        assert normalize_project_id(bad) is None
    assert slugify("  Acme Prod!  ") == "acme-prod"
    assert slugify("!!!") == "project"
    assert len(slugify("x" * 40)) == 32


async def test_reads(redis: Redis[bytes]) -> None:
    project = await tenant_admin.create_project(redis, "Acme")
    pid = project.project_id
    b = await tenant_admin.create_endpoint(redis, pid, "b", ["m"])
    a = await tenant_admin.create_endpoint(redis, pid, "a", ["m"])
    assert await get_project(redis, pid.lower()) == project
    assert await list_endpoints(redis, pid.lower()) == [a, b]
    assert await find_endpoint(redis, pid.lower(), "a") == a
    for project_id, name in ((pid, "nope"), (pid, "Bad_Name"), ("proj_NOPE", "a"), ("x", "a")):
        assert await find_endpoint(redis, project_id, name) is None
    # A malformed id is named as given, a well-formed one as normalised.
    for raw, named in (("not-a-project", "not-a-project"), ("proj_nope", "proj_NOPE")):
        with pytest.raises(NotFound, match=f"Project `{named}` not found."):
            await get_project(redis, raw)
        with pytest.raises(NotFound):
            await list_endpoints(redis, raw)
