"""The admin HTTP API against a real Redis: every route, the admin key, and its errors, which are
the CLI's (router.tenant_admin) in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from redis.asyncio import Redis

from contract.errors import AuthenticationFailed
from contract.keyspace import Keyspace
from contract.options import ConfigError
from contract.secrets import ADMIN_KEY_ENV
from router.admin_api import PREFIX, create_admin_app
from router.apikeys import authenticate
from router.config import parse_config
from router.tenants import KeyStatus, hash_key, key_usage_key, project_usage_key

ADMIN_KEY = "admin-secret-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}

Call = Callable[..., Awaitable[tuple[int, Any]]]


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, redis: Redis[bytes]) -> TestClient[Any, Any]:
    return await aiohttp_client(create_admin_app(redis, ADMIN_KEY))


@pytest.fixture
def call(client: TestClient[Any, Any]) -> Call:
    """`await call("POST", "/projects", json=...)` -> (status, JSON body), with the admin key."""

    async def go(method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = kwargs.pop("headers", AUTH)
        async with client.request(method, PREFIX + path, headers=headers, **kwargs) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()

    return go


def error(body: Any, code: str | None = None) -> dict[str, Any]:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code
    return dict(body["error"])


async def new_project(call: Call, name: str = "Acme") -> str:
    status, project = await call("POST", "/projects", json={"name": name})
    assert status == 201
    return str(project["project_id"])


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": f"Bearer {ADMIN_KEY}x"},
        {"Authorization": "Bearer "},
    ],
)
async def test_without_the_admin_key_every_path_is_401(call: Call, headers: dict[str, str]) -> None:
    for method, path in [("GET", "/projects"), ("POST", "/projects"), ("GET", "/no/such/path")]:
        status, body = await call(method, path, headers=headers, json={"name": "x"})
        assert status == 401, (method, path)
        error(body, "invalid_api_key")
    status, listing = await call("GET", "/projects")
    assert status == 200 and listing == {"object": "list", "data": []}  # nothing was created


async def test_projects(call: Call) -> None:
    status, project = await call("POST", "/projects", json={"name": "My Project"})
    assert status == 201 and project["slug"] == "my-project"
    pid = project["project_id"]
    assert await call("GET", f"/projects/{pid}") == (200, project)
    assert await call("GET", f"/projects/{pid.lower()}") == (200, project)
    _, other = await call("POST", "/projects", json={"name": "Other", "slug": "o-2"})
    assert other["slug"] == "o-2"
    assert await call("GET", "/projects") == (200, {"object": "list", "data": [project, other]})
    assert await call("DELETE", f"/projects/{pid}") == (200, {"deleted": pid})
    for method in ("GET", "DELETE"):
        status, body = await call(method, f"/projects/{pid}")
        assert status == 404 and pid in error(body, "not_found")["message"]
    assert (await call("GET", "/projects"))[1]["data"] == [other]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": 7}, "name"),
        ({"name": "x", "slug": "Bad_Slug"}, "slug"),
        ({"name": "x", "owner": "me"}, "owner"),
    ],
)
async def test_a_bad_project_is_400_naming_the_field(
    call: Call, body: dict[str, Any], param: str
) -> None:
    status, answer = await call("POST", "/projects", json=body)
    assert status == 400
    assert error(answer)["param"] == param
    assert (await call("GET", "/projects"))[1]["data"] == []


async def test_a_body_that_is_not_a_json_object_is_400(call: Call) -> None:
    for data in (b"{", b"[1]", b'"name"'):
        status, body = await call("POST", "/projects", data=data)
        assert status == 400 and error(body)["type"] == "invalid_request_error"


async def test_endpoints(call: Call) -> None:
    pid = await new_project(call)
    path = f"/projects/{pid}/endpoints"
    status, endpoint = await call("POST", path, json={"name": "chat", "models": ["m1", "m2", "m1"]})
    assert status == 201 and endpoint["models"] == ["m1", "m2"]
    status, body = await call("POST", path, json={"name": "chat", "models": ["m3"]})
    assert status == 409 and error(body, "conflict")["param"] == "name"
    for bad, param in [
        ({"name": "Chat", "models": ["m"]}, "name"),
        ({"name": "empty", "models": []}, "models"),
        ({"name": "x", "models": "m"}, "models"),
        ({"name": "x"}, "models"),
    ]:
        status, body = await call("POST", path, json=bad)
        assert status == 400 and error(body)["param"] == param, bad
    assert await call("GET", path) == (200, {"object": "list", "data": [endpoint]})
    assert await call("DELETE", f"{path}/chat") == (200, {"deleted": "chat"})
    assert (await call("DELETE", f"{path}/chat"))[0] == 404
    assert (await call("GET", path))[1]["data"] == []
    for method, missing in [
        ("POST", "/projects/proj_NOPE/endpoints"),
        ("GET", "/projects/x/endpoints"),
    ]:
        status, body = await call(method, missing, json={"name": "chat", "models": ["m"]})
        assert status == 404 and error(body, "not_found")


async def test_keys_show_their_secret_once_and_authenticate(
    call: Call, redis: Redis[bytes]
) -> None:
    pid = await new_project(call)
    limits = {"name": "ci", "rpm": 60, "tpm": 1000, "max_concurrent": 2, "expires_in_s": 3600}
    status, created = await call("POST", f"/projects/{pid}/keys", json=limits)
    assert status == 201 and created["key"].startswith("xero_acme_")
    assert created["status"] == KeyStatus.ACTIVE and created["rpm"] == 60
    assert created["expires_ms"] - created["created_ms"] == 3_600_000
    assert (await authenticate(redis, created["key"])).key_id == created["key_id"]

    status, listing = await call("GET", f"/projects/{pid}/keys")
    assert status == 200 and [k["key_id"] for k in listing["data"]] == [created["key_id"]]
    listed = listing["data"][0]
    assert "key" not in listed and "key_hash" not in listed
    assert created["key"] not in str(listing) and hash_key(created["key"]) not in str(listing)
    assert listed["prompt_tokens"] == 0 and listed["tpm"] == 1000

    key_path = f"/keys/{created['key_id']}"
    status, got = await call("GET", key_path)
    assert status == 200 and got == {k: v for k, v in created.items() if k != "key"}


async def test_revoke_and_delete_a_key(call: Call, redis: Redis[bytes]) -> None:
    pid = await new_project(call)
    _, created = await call("POST", f"/projects/{pid}/keys", json={})
    key_path = f"/keys/{created['key_id']}"
    status, revoked = await call("POST", key_path + "/revoke")
    assert status == 200 and revoked["status"] == KeyStatus.REVOKED
    with pytest.raises(AuthenticationFailed):
        await authenticate(redis, created["key"])
    again = await call("POST", key_path + "/revoke")
    assert again == (200, revoked)  # idempotent: the first revocation time stays
    assert await call("DELETE", key_path) == (200, {"deleted": created["key_id"]})
    for method, path in [("GET", key_path), ("DELETE", key_path), ("POST", key_path + "/revoke")]:
        status, body = await call(method, path)
        assert status == 404 and error(body, "not_found"), (method, path)
    assert (await call("GET", f"/projects/{pid}/keys"))[1]["data"] == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm": 0}, "rpm"),
        ({"tpm": -5}, "tpm"),
        ({"max_concurrent": "2"}, "max_concurrent"),
        ({"rpm": True}, "rpm"),
        ({"expires_in_s": 0}, "expires_in_s"),
        ({"expires_in_s": 1.5}, "expires_in_s"),
        ({"name": ["x"]}, "name"),
        ({"secret": "mine"}, "secret"),
    ],
)
async def test_a_bad_key_is_400_and_creates_nothing(
    call: Call, body: dict[str, Any], param: str
) -> None:
    pid = await new_project(call)
    status, answer = await call("POST", f"/projects/{pid}/keys", json=body)
    assert status == 400 and error(answer)["param"] == param
    assert (await call("GET", f"/projects/{pid}/keys"))[1]["data"] == []


async def test_usage_reads_the_token_counters(call: Call, redis: Redis[bytes]) -> None:
    pid = await new_project(call)
    _, one = await call("POST", f"/projects/{pid}/keys", json={"name": "one"})
    _, two = await call("POST", f"/projects/{pid}/keys", json={"name": "two"})
    ks = Keyspace("")
    # What router.ratelimit's settle writes.
    await redis.hset(
        key_usage_key(ks, one["key_id"]),
        mapping={"prompt_tokens": 7, "completion_tokens": 3, "requests": 1},
    )
    await redis.hset(
        project_usage_key(ks, pid),
        mapping={"prompt_tokens": 7, "completion_tokens": 3, "requests": 1},
    )
    status, used = await call("GET", f"/keys/{one['key_id']}/usage")
    assert status == 200
    assert used == {
        "key_id": one["key_id"],
        "project_id": pid,
        "prompt_tokens": 7,
        "completion_tokens": 3,
        "requests": 1,
    }
    status, project = await call("GET", f"/projects/{pid}/usage")
    assert status == 200 and (project["prompt_tokens"], project["requests"]) == (7, 1)
    by_key = {k["key_id"]: k["completion_tokens"] for k in project["keys"]}
    assert by_key == {one["key_id"]: 3, two["key_id"]: 0}
    listed = {
        k["key_id"]: k["prompt_tokens"]
        for k in (await call("GET", f"/projects/{pid}/keys"))[1]["data"]
    }
    assert listed == {one["key_id"]: 7, two["key_id"]: 0}
    for missing in ("/keys/key_nope/usage", "/projects/proj_NOPE/usage"):
        status, body = await call("GET", missing)
        assert status == 404 and error(body, "not_found")


async def test_unknown_routes_and_methods_are_openai_errors(call: Call) -> None:
    status, body = await call("GET", "/nothing")
    assert status == 404 and error(body, "not_found")
    status, body = await call("PUT", "/projects")
    assert status == 405 and error(body, "method_not_allowed")


async def test_redis_unreachable_is_503(aiohttp_client: AiohttpClient) -> None:
    dead: Redis[bytes] = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    client = await aiohttp_client(create_admin_app(dead, ADMIN_KEY))
    async with client.get(PREFIX + "/projects", headers=AUTH) as response:
        assert response.status == 503
        error(await response.json(), "service_unavailable")
    await dead.aclose()  # type: ignore[attr-defined]  # types-redis predates it


def test_the_admin_api_needs_a_key(redis: Redis[bytes]) -> None:
    with pytest.raises(ValueError, match="key"):
        create_admin_app(redis, "")


BASE = ["--redis-url", "redis://127.0.0.1:6379/0", "--port", "8080", "--metrics-port", "9180"]


def test_the_admin_options(tmp_path: Path) -> None:
    config = parse_config([*BASE, "--admin-port", "9190"], {})
    assert (config.admin_port, config.admin_redis) == (9190, "redis://127.0.0.1:6379/0")
    assert config.admin_key({}) is None and config.admin_key({ADMIN_KEY_ENV: " k1 "}) == "k1"
    assert parse_config(BASE, {}).admin_port is None  # off by default
    url = "redis://admin:pw@127.0.0.1:6379/0"
    assert parse_config(BASE, {"ROUTER_ADMIN_REDIS_URL": url}).admin_redis == url
    path = tmp_path / "admin.key"
    path.write_text("from-file\n")
    by_file = parse_config([*BASE, "--admin-key-file", str(path)], {})
    assert by_file.admin_key({ADMIN_KEY_ENV: "env"}) == "from-file"  # the file wins
    path.write_text("")
    with pytest.raises(ConfigError, match="the admin key file is empty"):
        by_file.admin_key({})
    for clash in ("8080", "9180"):
        with pytest.raises(SystemExit):
            parse_config([*BASE, "--admin-port", clash], {})
    with pytest.raises(SystemExit):
        parse_config([*BASE, "--admin-port", "9190", "--admin-redis-url", "http://x"], {})
