"""Projects, endpoints and keys over HTTP: the seed's path- and DNS-based URLs, with the openai SDK.

Real processes: redis-server, one fake-engine worker, two router replicas with auth on (one
logging at DEBUG, access log included, so the check that keys never reach a log means something).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest
import redis
from openai.types.chat import ChatCompletionMessageParam
from redis.asyncio import Redis as AsyncRedis

from contract.registry import now_ms
from router import tenant_admin
from router.admin import main as admin_main
from router.tenants import NewKey
from tests.processes import (
    MODEL_ID,
    HttpService,
    RedisServer,
    http_json,
    router_process,
    wait_until,
    worker_process,
)

BASE_DOMAIN = "api.localtest"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@dataclass
class Tenancy:
    redis: RedisServer
    routers: list[HttpService]
    project_id: str
    other_project_id: str
    key: str
    other_key: str

    def call(self, coro: Any) -> Any:
        async def run() -> Any:
            client = AsyncRedis.from_url(self.redis.url)
            try:
                return await coro(client)
            finally:
                await client.aclose()  # type: ignore[attr-defined]

        return asyncio.run(run())

    def new_key(self, **limits: Any) -> NewKey:
        new: NewKey = self.call(
            lambda r: tenant_admin.create_key(r, self.project_id, name="t", **limits)
        )
        return new


def _setup(r: AsyncRedis[Any]) -> Any:
    async def go() -> tuple[str, str, str, str]:
        project = await tenant_admin.create_project(r, "Acme")
        other = await tenant_admin.create_project(r, "Other")
        await tenant_admin.create_endpoint(r, project.project_id, "chat", [MODEL_ID])
        await tenant_admin.create_endpoint(r, project.project_id, "empty", ["not-served"])
        await tenant_admin.create_endpoint(r, other.project_id, "chat", [MODEL_ID])
        key = await tenant_admin.create_key(r, project.project_id, name="main")
        other_key = await tenant_admin.create_key(r, other.project_id, name="other")
        return project.project_id, other.project_id, key.key, other_key.key

    return go()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenancy]:
    tmp: Path = tmp_path_factory.mktemp("tenancy")
    server = RedisServer.create(tmp)
    server.start()
    worker = worker_process(tmp, server.url, "fw0", engine="fake")
    extra = ("--base-domain", BASE_DOMAIN, "--key-cache-ttl-s", "1")
    levels = [("--log-level", "INFO"), ("--log-level", "DEBUG")]
    routers = [
        router_process(tmp, server.url, f"r{i}", (*extra, *levels[i]), auth=True) for i in range(2)
    ]
    procs = [worker, *routers]
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.wait_healthy()
        for router in routers:
            wait_until(partial(_serves_one_model, router), 10, "model")
        t = Tenancy(server, routers, "", "", "", "")
        t.project_id, t.other_project_id, t.key, t.other_key = t.call(_setup)
        yield t
    finally:
        for proc in [*procs]:
            proc.stop()
        server.stop()


def _serves_one_model(router: HttpService) -> bool:
    return bool(http_json(router.url + "/health")[1]["models"] == 1)


def sdk(base_url: str, key: str, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30, **kwargs)


def test_path_based_url_with_the_sdk(stack: Tenancy) -> None:
    base = f"{stack.routers[0].url}/{stack.project_id}/chat/v1"
    with sdk(base, stack.key) as c:
        reply = c.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=4)
        assert reply.choices[0].finish_reason == "length"
        assert [m.id for m in c.models.list().data] == [MODEL_ID]
        assert c.models.retrieve(MODEL_ID).id == MODEL_ID
    with sdk(f"{stack.routers[0].url}/{stack.project_id}/v1", stack.key) as c:
        assert [m.id for m in c.models.list().data] == [MODEL_ID]


def test_dns_based_url_with_the_sdk(stack: Tenancy) -> None:
    host = f"chat.{stack.project_id.lower()}.{BASE_DOMAIN}"
    with sdk(stack.routers[1].url + "/v1", stack.key, default_headers={"Host": host}) as c:
        reply = c.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=3)
        assert reply.usage is not None and reply.usage.completion_tokens == 3
        assert [m.id for m in c.models.list().data] == [MODEL_ID]
        assert c.models.retrieve(MODEL_ID).id == MODEL_ID
    unknown = f"nope.{stack.project_id.lower()}.{BASE_DOMAIN}"
    with (
        sdk(stack.routers[1].url + "/v1", stack.key, default_headers={"Host": unknown}) as c,
        pytest.raises(openai.NotFoundError),
    ):
        c.chat.completions.create(model=MODEL_ID, messages=HELLO)
    # Another project's key on this project's host: as if the host did not exist.
    with sdk(stack.routers[1].url + "/v1", stack.other_key, default_headers={"Host": host}) as c:
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model=MODEL_ID, messages=HELLO)
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve(MODEL_ID)


def test_hosts_outside_the_base_domain_route_plainly(stack: Tenancy) -> None:
    for host in ("router.internal:8080", BASE_DOMAIN, "chat.proj_nope.elsewhere.test"):
        with sdk(stack.routers[0].url + "/v1", stack.key, default_headers={"Host": host}) as c:
            reply = c.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=1)
            assert reply.choices[0].finish_reason == "length"
    resp = httpx.get(
        stack.routers[0].url + "/v1/models",
        headers={"Host": f"chat.proj_nope.{BASE_DOMAIN}", "Authorization": f"Bearer {stack.key}"},
    )
    assert resp.status_code == 404


def test_plain_v1_uses_the_keys_project(stack: Tenancy) -> None:
    with sdk(stack.routers[0].url + "/v1", stack.key) as c:
        stream = c.chat.completions.create(
            model=MODEL_ID, messages=HELLO, max_tokens=2, stream=True
        )
        assert [ch.choices[0].finish_reason for ch in stream if ch.choices][-1] == "length"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer nope", "Basic abc", "Bearer xero_acme_" + "A" * 43],
)
def test_bad_keys_get_401(stack: Tenancy, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    resp = httpx.post(
        f"{stack.routers[0].url}/{stack.project_id}/chat/v1/chat/completions",
        json={"model": MODEL_ID, "messages": HELLO},
        headers=headers,
    )
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"


def test_revoked_and_expired_keys_get_401(stack: Tenancy) -> None:
    revoked = stack.new_key()
    expiring = stack.new_key(expires_ms=now_ms() + 1_000)
    stack.call(lambda r: tenant_admin.revoke_key(r, revoked.record.key_id))
    time.sleep(1.2)
    for new in (revoked, expiring):
        with sdk(stack.routers[0].url + "/v1", new.key) as c:
            with pytest.raises(openai.AuthenticationError) as err:
                c.chat.completions.create(model=MODEL_ID, messages=HELLO)
            assert err.value.code == "invalid_api_key"


def test_other_projects_key_sees_404(stack: Tenancy) -> None:
    with sdk(f"{stack.routers[0].url}/{stack.project_id}/chat/v1", stack.other_key) as c:
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model=MODEL_ID, messages=HELLO)
        with pytest.raises(openai.NotFoundError):
            c.models.list()


def test_endpoint_without_the_model_is_model_not_found(stack: Tenancy) -> None:
    with sdk(f"{stack.routers[0].url}/{stack.project_id}/empty/v1", stack.key) as c:
        with pytest.raises(openai.NotFoundError) as err:
            c.chat.completions.create(model=MODEL_ID, messages=HELLO)
        assert err.value.code == "model_not_found"
        assert c.models.list().data == []  # "not-served" has no live worker, MODEL_ID is not its
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve(MODEL_ID)
    with (
        sdk(f"{stack.routers[0].url}/{stack.project_id}/nope/v1", stack.key) as c,
        pytest.raises(openai.NotFoundError),
    ):
        c.models.list()


def test_model_lists_show_only_what_the_project_can_use(stack: Tenancy) -> None:
    async def bare(r: AsyncRedis[Any]) -> str:
        project = await tenant_admin.create_project(r, "Bare")
        return (await tenant_admin.create_key(r, project.project_id)).key

    bare_key: str = stack.call(bare)  # a project without endpoints
    for router in stack.routers:
        with sdk(router.url + "/v1", bare_key) as c:
            assert c.models.list().data == []
            with pytest.raises(openai.NotFoundError):
                c.models.retrieve(MODEL_ID)
            with pytest.raises(openai.NotFoundError) as err:
                c.chat.completions.create(model=MODEL_ID, messages=HELLO)
            assert err.value.code == "model_not_found"
        with sdk(router.url + "/v1", stack.key) as c:
            assert [m.id for m in c.models.list().data] == [MODEL_ID]


def test_two_replicas_share_one_request_limit(stack: Tenancy) -> None:
    limited = stack.new_key(rpm=5)

    def post(i: int) -> httpx.Response:
        return httpx.post(
            f"{stack.routers[i % 2].url}/v1/chat/completions",
            json={"model": MODEL_ID, "messages": HELLO, "max_tokens": 1},
            headers={"Authorization": f"Bearer {limited.key}"},
            timeout=30,
        )

    with ThreadPoolExecutor(12) as pool:  # all at once, half on each replica
        responses = list(pool.map(post, range(12)))
    admitted = refused = 0
    for resp in responses:
        if resp.status_code == 200:
            admitted += 1
            assert resp.headers["x-ratelimit-limit-requests"] == "5"
            assert "x-ratelimit-remaining-requests" in resp.headers
        else:
            assert resp.status_code == 429
            assert resp.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(resp.headers["Retry-After"]) >= 1
            assert resp.headers["x-ratelimit-remaining-requests"] == "0"
            assert resp.headers["x-ratelimit-reset-requests"]
            refused += 1
    assert admitted == 5
    assert refused == 7


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_are_charged_after_the_response(stack: Tenancy, stream: bool) -> None:
    limited = stack.new_key(tpm=20)
    body = {"model": MODEL_ID, "messages": HELLO, "max_tokens": 16, "stream": stream}
    headers = {"Authorization": f"Bearer {limited.key}"}
    url = f"{stack.routers[0].url}/v1/chat/completions"
    first = httpx.post(url, json=body, headers=headers)
    assert first.status_code == 200
    assert b": usage" not in first.content  # the worker's usage trailer never reaches clients
    if stream:
        assert first.content.endswith(b"data: [DONE]\n\n")
    # 5 prompt + 16 completion tokens > 20: the next request waits for the bucket to refill.
    second = httpx.post(url.replace(stack.routers[0].url, stack.routers[1].url), json=body,
                        headers=headers)  # fmt: skip
    assert second.status_code == 429
    assert second.headers["x-ratelimit-limit-tokens"] == "20"


def test_revocation_reaches_every_replica_within_5_s(stack: Tenancy) -> None:
    new = stack.new_key()
    for router in stack.routers:  # both replicas cache the key as valid
        with sdk(router.url + "/v1", new.key) as c:
            c.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=1)
    stack.call(lambda r: tenant_admin.revoke_key(r, new.record.key_id))
    revoked_at = time.monotonic()

    def refused_everywhere() -> bool:
        return all(
            httpx.get(
                r.url + "/v1/models", headers={"Authorization": f"Bearer {new.key}"}
            ).status_code
            == 401
            for r in stack.routers
        )

    wait_until(refused_everywhere, 5.0, "every replica to refuse the revoked key")
    assert time.monotonic() - revoked_at <= 5.0


def test_keys_never_in_logs_or_redis(stack: Tenancy) -> None:
    secret = stack.key.split("_", 2)[2]  # xero_<slug>_<secret>; the secret may hold "_"
    assert len(secret) >= 32
    for router in stack.routers:
        httpx.get(router.url + "/v1/models", headers={"Authorization": f"Bearer {stack.key}"})
        assert secret not in router.log()
    with redis.Redis.from_url(stack.redis.url) as r:
        for name in r.scan_iter(count=1000):
            assert secret.encode() not in name
            kind = r.type(name)  # type: ignore[no-untyped-call]
            values: list[bytes] = []
            if kind == b"hash":
                values = [*r.hgetall(name).keys(), *r.hgetall(name).values()]
            elif kind == b"string":
                values = [r.get(name) or b""]
            elif kind == b"set":
                values = list(r.smembers(name))
            assert all(secret.encode() not in v for v in values), name


def test_metrics_carry_project_and_endpoint(stack: Tenancy) -> None:
    router = stack.routers[0]
    with sdk(f"{router.url}/{stack.project_id}/chat/v1", stack.key) as c:
        c.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=1)
    text = httpx.get(router.url + "/metrics").text
    line = (
        f'router_project_requests_total{{project="{stack.project_id}",'
        f'project_endpoint="chat",status_class="2xx"}}'
    )
    assert line in text


def test_admin_demo_is_idempotent_and_its_urls_work(
    stack: Tenancy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    router = stack.routers[0]
    env_file = tmp_path / "run" / "demo.env"
    argv = ["--redis-url", stack.redis.url, "demo", "--model", MODEL_ID, "--env-file",
            str(env_file), "--router-url", router.url, "--base-domain", BASE_DOMAIN]  # fmt: skip
    assert admin_main([*argv, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["project_created"], first["endpoint_status"], first["key_created"]) == (
        True, "created", True,
    )  # fmt: skip
    assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
    assert f"DEMO_KEY={first['key']}" in env_file.read_text()

    assert admin_main(argv) == 0  # again: the same project, endpoint and key
    text = capsys.readouterr().out
    assert f"{first['key_id']}: reused" in text and first["key"] in text
    assert f"base_url={first['path_base_url']}" in text
    assert f"Host: {first['dns_host']}" in text
    assert admin_main([*argv, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["project_created"], again["endpoint_status"], again["key_created"]) == (
        False, "existing", False,
    )  # fmt: skip
    assert {k: again[k] for k in ("project_id", "key", "key_id")} == {
        k: first[k] for k in ("project_id", "key", "key_id")
    }

    key = first["key"]
    assert first["path_base_url"] == f"{router.url}/{first['project_id']}/chat/v1"
    with sdk(first["path_base_url"], key) as c:
        c.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=1)
    with sdk(first["plain_base_url"], key, default_headers={"Host": first["dns_host"]}) as c:
        c.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=1)
    with sdk(first["plain_base_url"], key) as c:
        assert [m.id for m in c.models.list().data] == [MODEL_ID]

    # A revoked saved key is replaced, not reused.
    stack.call(lambda r: tenant_admin.revoke_key(r, first["key_id"]))
    assert admin_main([*argv, "--json"]) == 0
    third = json.loads(capsys.readouterr().out)
    assert third["key_created"] and third["key"] != key
    assert third["project_id"] == first["project_id"]
    assert f"DEMO_KEY={third['key']}" in env_file.read_text()


def test_a_redis_prefix_keeps_a_deployments_tenants_to_itself(
    stack: Tenancy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second deployment on the same Redis under `staging:`: its admin CLI, router and worker
    see only its own projects and keys, and the first deployment's keys mean nothing to it."""
    prefix = ("--redis-prefix", "staging:")
    worker = worker_process(tmp_path, stack.redis.url, "sw0", engine="fake", extra=prefix)
    router = router_process(tmp_path, stack.redis.url, "rs", prefix, auth=True)

    def admin(*argv: str) -> Any:
        common = ["--redis-url", stack.redis.url, "--redis-prefix", "staging:", "--json"]
        assert admin_main([*common, *argv]) == 0
        return json.loads(capsys.readouterr().out)

    pid = admin("project", "create", "Staging")["project_id"]
    admin("endpoint", "create", pid, "chat", "--model", MODEL_ID)
    key = admin("key", "create", pid)["key"]
    try:
        for proc in (worker, router):
            proc.start()
        for proc in (worker, router):
            proc.wait_healthy()
        wait_until(partial(_serves_one_model, router), 10, "the staging worker")
        with sdk(router.url + "/v1", key) as c:
            reply = c.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=2)
            assert reply.usage is not None and reply.usage.completion_tokens == 2
        for base, foreign in ((router.url, stack.key), (stack.routers[0].url, key)):
            with sdk(base + "/v1", foreign) as c, pytest.raises(openai.AuthenticationError):
                c.chat.completions.create(model=MODEL_ID, messages=HELLO, max_tokens=1)
        with redis.Redis.from_url(stack.redis.url) as r:
            staged = {name.decode() for name in r.scan_iter("staging:*")}
        assert f"staging:usage:project:{pid}" in staged  # counted under its prefix
        assert f"staging:project:{pid}:keys" in staged and "staging:projects" in staged
    finally:
        for proc in (router, worker):
            proc.stop()
