"""Redis least privilege: a real redis-server loads the ACL file deploy/redis/acl.py generates,
and each role can do its job and nothing past it.

- worker: registry keys and the events channel only; NOPERM on `apikey:*` (it cannot mint a key)
  and on `ratelimit:*`.
- router: reads everything under its prefix, writes only `ratelimit:*`, `usage:*`,
  `concurrency:*` (the real rate-limit scripts run), NOPERM on tenancy and registry writes.
- admin: writes tenancy.
- nobody connects without a user: the default user is off.
Then a real worker, router and admin CLI, each with its own user, serve a request end to end.
Every case runs twice: without a prefix, and with one (the patterns carry it, and a key outside
the prefix is out of reach even for the admin).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from benchmarks.processes import REPO_ROOT, free_port, router_sees, wait_until
from contract.keyspace import Keyspace
from contract.registry import EVENTS_CHANNEL
from deploy.local.secrets import auth_ping
from deploy.redis.acl import acl_file
from deploy.redis.secrets import new_passwords, role_url
from router.ratelimit import RateLimiter
from router.tenants import key_usage_key, ratelimit_key
from tests.processes import MODEL_ID, RedisServer, router_process, worker_process

from .services import CHAT, running


@dataclass(frozen=True)
class AclRedis:
    server: RedisServer
    prefix: str
    passwords: dict[str, str]

    def url(self, role: str) -> str:
        return role_url(self.server.url, role, self.passwords[role])

    def key(self, name: str) -> str:
        return Keyspace(self.prefix).key(name)


@pytest.fixture(scope="module", params=["", "stage:"], ids=["no-prefix", "prefix"])
def acl_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AclRedis]:
    tmp = tmp_path_factory.mktemp("acl")
    prefix: str = request.param
    passwords = new_passwords()
    users = tmp / "users.acl"
    users.write_text(acl_file(prefix, passwords))
    server = RedisServer.create(tmp, options=["--aclfile", str(users)])
    server.start()
    try:
        wait_until(lambda: auth_ping(server.port, "exporter", passwords["exporter"]), 10, "AUTH")
        yield AclRedis(server, prefix, passwords)
    finally:
        server.stop()


@pytest.fixture
async def clients(acl_redis: AclRedis) -> AsyncIterator[dict[str, Redis[bytes]]]:
    made: dict[str, Redis[bytes]] = {
        role: Redis.from_url(acl_redis.url(role)) for role in ("worker", "router", "admin")
    }
    yield made
    for client in made.values():
        await client.aclose()  # type: ignore[attr-defined]


async def test_nobody_connects_without_a_user(acl_redis: AclRedis) -> None:
    anonymous: Redis[bytes] = Redis.from_url(acl_redis.server.url)
    try:
        # redis-py's HELLO or the command itself is refused: NOAUTH / "authenticated".
        with pytest.raises((AuthenticationError, ResponseError), match=r"(?i)auth"):
            await anonymous.ping()
        with pytest.raises((AuthenticationError, ResponseError), match=r"(?i)auth"):
            await anonymous.set(acl_redis.key("apikey:x"), "1")
    finally:
        await anonymous.aclose()  # type: ignore[attr-defined]
    for password in ("", "x" * 16, acl_redis.passwords["admin"]):
        default: Redis[bytes] = Redis.from_url(acl_redis.server.url, password=password or None)
        try:
            with pytest.raises((AuthenticationError, ResponseError)):
                await default.ping()
        finally:
            await default.aclose()  # type: ignore[attr-defined]
    wrong: Redis[bytes] = Redis.from_url(role_url(acl_redis.server.url, "router", "y" * 48))
    try:
        with pytest.raises(AuthenticationError):
            await wrong.ping()
    finally:
        await wrong.aclose()  # type: ignore[attr-defined]


async def test_a_worker_writes_the_registry_and_nothing_else(
    acl_redis: AclRedis, clients: dict[str, Redis[bytes]]
) -> None:
    worker, key = clients["worker"], acl_redis.key
    await worker.hset(key("worker:w1"), mapping={"url": "http://127.0.0.1:9001"})
    await worker.pexpire(key("worker:w1"), 5000)
    await worker.sadd(key("workers"), "w1")
    await worker.sadd(key(f"model:{MODEL_ID}:workers"), "w1")
    await worker.hsetnx(key("models"), MODEL_ID, "1")
    await worker.publish(key(EVENTS_CHANNEL), b"{}")
    assert await worker.smembers(key("workers")) == {b"w1"}  # it prunes dead ids itself
    await worker.delete(key("worker:w1"))
    for name in ("apikey:0123", "apikey_id:k1", "projects", "project:p:keys", "ratelimit:k1"):
        with pytest.raises(NoPermissionError):
            await worker.hset(key(name), "f", "v")
        with pytest.raises(NoPermissionError):
            await worker.hgetall(key(name))
    with pytest.raises(NoPermissionError):
        await worker.publish(key("other"), b"{}")
    with pytest.raises(NoPermissionError):
        await worker.flushall()


async def test_a_router_reads_all_and_writes_only_its_limits(
    acl_redis: AclRedis, clients: dict[str, Redis[bytes]]
) -> None:
    router, admin, key = clients["router"], clients["admin"], acl_redis.key
    await admin.hset(key("apikey:abc"), "project_id", "proj_X")
    assert await router.hget(key("apikey:abc"), "project_id") == b"proj_X"
    assert await router.smembers(key("workers")) is not None
    limiter = RateLimiter(router, Keyspace(acl_redis.prefix))
    decision = await limiter.admit("k1", 60, 1000, reserve=10)
    assert decision.admitted
    await limiter.settle("k1", "proj_X", (3, 4), tpm=1000, reserved=10)
    assert await router.exists(key("ratelimit:k1"))
    for name in ("apikey:abc", "apikey_id:k1", "projects", "worker:evil", "workers", "models"):
        with pytest.raises(NoPermissionError):
            await router.hset(key(name), "f", "v")
        with pytest.raises(NoPermissionError):
            await router.delete(key(name))
    # A script's keys are checked too: the rate-limit script cannot be aimed at tenancy.
    with pytest.raises(NoPermissionError):
        await RateLimiter(router, Keyspace(acl_redis.prefix + "apikey:")).admit("k1", 60, 1000)
    with pytest.raises(NoPermissionError):
        await router.publish(key(EVENTS_CHANNEL), b"{}")
    # The worker's user cannot run the limiter either.
    with pytest.raises(NoPermissionError):
        await RateLimiter(clients["worker"], Keyspace(acl_redis.prefix)).admit("k1", 60, 1000)


async def test_the_admin_writes_tenancy_inside_its_prefix_only(
    acl_redis: AclRedis, clients: dict[str, Redis[bytes]]
) -> None:
    admin, key = clients["admin"], acl_redis.key
    await admin.hset(key("projects"), "proj_Y", "{}")
    await admin.set(key("apikey_id:k9"), "digest")
    await admin.delete(key("apikey_id:k9"), key("ratelimit:k9"))
    with pytest.raises(NoPermissionError):
        await admin.flushall()
    if acl_redis.prefix:
        # Another deployment's keys (no prefix, or another one) are out of every role's reach.
        for role, client in clients.items():
            with pytest.raises(NoPermissionError):
                await client.hgetall("projects")
            with pytest.raises(NoPermissionError):
                await client.hset(f"prod:worker:{role}", "f", "v")


def _admin(acl_redis: AclRedis, *args: str) -> Any:
    """`python -m router admin --json ...` as the admin user; its JSON answer."""
    prefix = ["--redis-prefix", acl_redis.prefix] if acl_redis.prefix else []
    out = subprocess.run(
        [sys.executable, "-m", "router", "admin", *prefix, "--json", *args],
        cwd=REPO_ROOT,
        env={**os.environ, "REDIS_URL": acl_redis.url("admin")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _chat(router_url: str, key: str) -> tuple[int, Any]:
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    request = urllib.request.Request(
        router_url + CHAT,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_worker_router_and_admin_serve_end_to_end_with_their_users(
    acl_redis: AclRedis, tmp_path: Path
) -> None:
    secret = tmp_path / "worker-secret"
    secret.write_text("s" * 43)
    prefix = ("--redis-prefix", acl_redis.prefix) if acl_redis.prefix else ()
    shared = (*prefix, "--worker-secret-file", str(secret))
    worker = worker_process(tmp_path, acl_redis.url("worker"), "w-acl", engine="fake", extra=shared)
    router = router_process(
        tmp_path, acl_redis.url("router"), "r-acl", (*shared, "--metrics-port", str(free_port())),
        auth=True,
    )  # fmt: skip
    project = _admin(acl_redis, "project", "create", "ACL test")["project_id"]
    _admin(acl_redis, "endpoint", "create", project, "chat", "--model", MODEL_ID)
    # --rpm 1: the key's rate-limit hash outlives the test by a minute, so it can be looked at.
    created = _admin(acl_redis, "key", "create", project, "--rpm", "1", "--tpm", "100000")
    with running(worker, router):
        wait_until(lambda: router_sees(router.url, 1), 10, "the router to see the worker")
        status, body = _chat(router.url, created["key"])
        assert status == 200, body
        assert body["choices"][0]["message"]["content"]
    # The router kept its books: the key's limits and its token counters (no refused write).
    keyspace = Keyspace(acl_redis.prefix)
    with redis.Redis.from_url(acl_redis.url("admin")) as admin:
        assert admin.exists(ratelimit_key(keyspace, created["key_id"]))
        assert admin.exists(key_usage_key(keyspace, created["key_id"]))
    logs = worker.log() + router.log()
    assert "NOPERM" not in logs and "could not" not in logs
