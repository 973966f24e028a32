"""The admin HTTP API on a real router: tenancy made through it serves a chat through the openai
SDK, its usage reads back, and a key it revokes is refused within the key cache TTL. The admin
port is the only place it answers, only with the admin key, and never without one; under the
deploy's ACL users it writes tenancy with the admin user (`--admin-redis-url`)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from benchmarks.processes import free_port, http_status, router_argv, router_sees
from deploy.local.secrets import auth_ping
from deploy.redis.acl import acl_file
from deploy.redis.secrets import new_passwords, role_url
from router.admin_api import PREFIX
from tests.processes import MODEL_ID, RedisServer, router_process, wait_until, worker_process

from .services import running

ADMIN_KEY = "test-admin-key-0123456789abcdef"
KEY_CACHE_TTL_S = 1.0


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer.create(tmp_path_factory.mktemp("admin-redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def admin(
    port: int, method: str, path: str, body: Any = None, key: str | None = ADMIN_KEY
) -> tuple[int, Any]:
    """One admin API call: (status, JSON body)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{PREFIX}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def created(answer: tuple[int, Any]) -> dict[str, Any]:
    status, body = answer
    assert status == 201, body
    return dict(body)


def test_tenancy_made_through_the_api_serves_and_is_revoked(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    worker = worker_process(tmp_path, redis_url, "aw0", engine="fake")
    router = router_process(
        tmp_path,
        redis_url,
        extra=("--admin-port", str(port), "--key-cache-ttl-s", str(KEY_CACHE_TTL_S)),
        auth=True,
    )
    router.env["XERO_ADMIN_KEY"] = ADMIN_KEY  # never a flag: the command line is public
    with running(worker, router):
        wait_until(lambda: router_sees(router.url, 1), 10, "the worker")
        assert admin(port, "GET", "/projects", key=None)[0] == 401
        assert admin(port, "GET", "/projects", key="wrong")[0] == 401
        assert http_status(f"{router.url}{PREFIX}/projects") in (401, 404)  # not on the main port

        pid = created(admin(port, "POST", "/projects", {"name": "Acme"}))["project_id"]
        created(
            admin(
                port, "POST", f"/projects/{pid}/endpoints", {"name": "chat", "models": [MODEL_ID]}
            )
        )
        new = created(admin(port, "POST", f"/projects/{pid}/keys", {"name": "sdk"}))
        key, key_id = new["key"], new["key_id"]
        assert ADMIN_KEY not in router.log() and key not in router.log()

        client = openai.OpenAI(
            base_url=f"{router.url}/{pid}/chat/v1", api_key=key, max_retries=0, timeout=30
        )
        with client:
            reply = client.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=5
            )
            assert reply.usage is not None and reply.usage.completion_tokens == 5

            # Settling the tokens is off the answer's path: wait for the counters to move.
            def counted() -> bool:
                status, used = admin(port, "GET", f"/keys/{key_id}/usage")
                return status == 200 and used["completion_tokens"] == 5

            wait_until(counted, 10, "the key's usage")
            used = admin(port, "GET", f"/projects/{pid}/usage")[1]
            assert used["requests"] == 1 and used["prompt_tokens"] == reply.usage.prompt_tokens

            status, revoked = admin(port, "POST", f"/keys/{key_id}/revoke")
            assert status == 200 and revoked["status"] == "revoked"
            revoked_at = time.monotonic()
            while True:
                try:
                    client.chat.completions.create(
                        model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=1
                    )
                except openai.AuthenticationError:
                    break
                assert time.monotonic() - revoked_at < KEY_CACHE_TTL_S + 1.0, "still served"
                time.sleep(0.1)


def test_an_admin_port_without_a_key_refuses_to_start(redis_url: str) -> None:
    argv = router_argv(free_port(), redis_url, options=("--admin-port", str(free_port())))
    env = {"PATH": "", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert "XERO_ADMIN_KEY" in done.stderr


def test_under_acl_users_the_admin_api_writes_with_the_admin_user(tmp_path: Path) -> None:
    """The router's own Redis user cannot write tenancy: the admin API needs --admin-redis-url."""
    prefix, passwords = "stage:", new_passwords()
    users = tmp_path / "users.acl"
    users.write_text(acl_file(prefix, passwords))
    server = RedisServer.create(tmp_path, options=["--aclfile", str(users)])
    server.start()
    try:
        wait_until(lambda: auth_ping(server.port, "exporter", passwords["exporter"]), 10, "AUTH")
        router_url, admin_url = (role_url(server.url, r, passwords[r]) for r in ("router", "admin"))
        ports = free_port(), free_port()
        routers = [
            router_process(
                tmp_path,
                router_url,
                f"r{i}",
                ("--redis-prefix", prefix, "--admin-port", str(ports[i]), *extra),
            )
            for i, extra in enumerate([("--admin-redis-url", admin_url), ()])
        ]
        for router in routers:
            router.env["XERO_ADMIN_KEY"] = ADMIN_KEY
        with running(*routers):
            status, project = admin(ports[0], "POST", "/projects", {"name": "Acme"})
            assert status == 201 and project["project_id"].startswith("proj_")
            status, body = admin(ports[1], "POST", "/projects", {"name": "Acme"})
            assert status == 503 and "may not write tenancy" in body["error"]["message"]
            assert admin(ports[1], "GET", "/projects")[1]["data"] == [project]  # it may read
    finally:
        server.stop()
