"""Redis credentials end to end: a redis-server with a password (the admin's, on the default
user) and two ACL users, `worker` and `router`, allowed exactly the registry commands their code
runs, on a plain port and a TLS port (a CA made here with openssl). The router, a worker and the
admin CLI work over `redis://user:pass@`, `?password=` and `rediss://`; with a wrong password
each fails with a message that says so and never shows the password, and no log line holds one.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.exceptions import NoPermissionError

from benchmarks.processes import (
    REPO_ROOT,
    ProcessExited,
    free_port,
    http_json,
    router_sees,
    wait_until,
)
from router.cli import _redacted
from tests.processes import RedisServer, router_process, worker_process

from .services import post_chat, running

ADMIN_PASSWORD = "admin-Pw-7f3a9"
WORKER_PASSWORD = "worker-Pw-51c2e"
ROUTER_PASSWORD = "router-Pw-0d8b4"
WRONG_PASSWORD = "wrong-Pw-9e6f1"
PASSWORDS = (ADMIN_PASSWORD, WORKER_PASSWORD, ROUTER_PASSWORD, WRONG_PASSWORD)

# The registry commands each role's code runs (contract.registry, worker.heartbeat,
# router.watcher), and nothing else: if the code needed more, these tests would fail.
WORKER_ACL = (
    "worker on >" + WORKER_PASSWORD,
    "resetkeys ~worker:* ~workers ~model:*:workers ~models",
    "resetchannels &registry:events",
    "-@all +ping +hset +pexpire +sadd +srem +hsetnx +publish +del +smembers +exists +hkeys",
)
ROUTER_ACL = (  # read-only keys (%R~); with --auth off it needs no tenancy keys
    "router on >" + ROUTER_PASSWORD,
    "resetkeys %R~worker:* %R~workers %R~models",
    "resetchannels &registry:events",
    "-@all +ping +smembers +hgetall +subscribe +unsubscribe",
)


@dataclass(frozen=True)
class SecuredRedis:
    server: RedisServer
    tls_port: int | None  # None: this redis-server was built without TLS
    ca_file: Path

    def url(self, userinfo: str, *, tls: bool = False, query: str = "") -> str:
        """A URL to it; `userinfo` as written before the `@` ("" for none)."""
        at = f"{userinfo}@" if userinfo else ""
        if not tls:
            return f"redis://{at}127.0.0.1:{self.server.port}/0" + (f"?{query}" if query else "")
        ca = f"ssl_ca_certs={self.ca_file}"
        return f"rediss://{at}127.0.0.1:{self.tls_port}/0?" + (f"{query}&{ca}" if query else ca)


def _make_certificates(tmp: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate it signed for 127.0.0.1."""
    files = {name: tmp / name for name in ("ca.crt", "ca.key", "redis.crt", "redis.key")}
    (tmp / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ca, key = str(files["ca.crt"]), str(files["ca.key"])
    csr, ext = str(tmp / "redis.csr"), str(tmp / "san.ext")
    for argv in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
         "-keyout", key, "-out", ca],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", str(files["redis.key"]), "-out", csr],
        ["x509", "-req", "-in", csr, "-days", "1", "-CAcreateserial", "-CA", ca, "-CAkey", key,
         "-out", str(files["redis.crt"]), "-extfile", ext],
    ):  # fmt: skip
        subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60)
    return files


def _options(tls_port: int | None, certs: dict[str, Path]) -> list[str]:
    options = ["--requirepass", ADMIN_PASSWORD]
    for rule in (WORKER_ACL, ROUTER_ACL):
        options += ["--user", *" ".join(rule).split()]  # one argument per ACL word
    if tls_port is not None:
        options += ["--tls-port", str(tls_port), "--tls-auth-clients", "no"]
        options += ["--tls-cert-file", str(certs["redis.crt"])]
        options += ["--tls-key-file", str(certs["redis.key"])]
        options += ["--tls-ca-cert-file", str(certs["ca.crt"])]
    return options


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    tmp = tmp_path_factory.mktemp("secured-redis")
    certs = _make_certificates(tmp)
    tls_port: int | None = free_port()
    server = RedisServer.create(tmp, options=_options(tls_port, certs))
    try:
        server.start()
    except ProcessExited as exc:
        if "tls" not in str(exc).lower():
            raise
        # Built without TLS: test the passwords on the plain port alone.
        tls_port = None
        server = RedisServer.create(tmp, options=_options(tls_port, certs))
        server.start()
    try:
        yield SecuredRedis(server, tls_port, certs["ca.crt"])
    finally:
        server.stop()


def _admin(url: str, *command: str) -> subprocess.CompletedProcess[str]:
    """`python -m router admin --json ...`, with no REDIS_URL of ours in its environment."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    argv = [sys.executable, "-m", "router", "admin", "--redis-url", url, "--json", *command]
    return subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _assert_no_password(*texts: str) -> None:
    for text in texts:
        for password in PASSWORDS:
            assert password not in text


TRANSPORTS = ["plain", "tls"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_router_worker_and_admin_work_with_credentials(
    secured: SecuredRedis, transport: str, tmp_path: Path
) -> None:
    tls = transport == "tls"
    if tls and secured.tls_port is None:
        pytest.skip("this redis-server was built without TLS")
    worker_url = secured.url(f"worker:{WORKER_PASSWORD}", tls=tls)
    router_url = secured.url("router", tls=tls, query=f"password={ROUTER_PASSWORD}")
    admin_url = secured.url(f":{ADMIN_PASSWORD}", tls=tls)

    created = _admin(admin_url, "project", "create", f"Acme {transport}")
    assert created.returncode == 0, created.stderr
    project_id = json.loads(created.stdout)["project_id"]
    listed = _admin(admin_url, "project", "list")
    assert project_id in {p["project_id"] for p in json.loads(listed.stdout)}

    worker = worker_process(tmp_path, worker_url, f"w-{transport}", engine="fake")
    router = router_process(tmp_path, router_url)
    with running(worker), redis.Redis.from_url(admin_url) as admin:
        # An expired worker's id, left for the next worker to prune: the router, which may
        # only read, must not need to.
        admin.sadd("workers", "ghost")
        with running(router):
            wait_until(lambda: router_sees(router.url, 1), 10, "the router to see the worker")
            status, body = post_chat(router.url)
            assert status == 200, body
            age = http_json(router.url + "/health")[1]["registry_age_s"]
            assert age is not None and age < 2  # its full reads succeed
        assert admin.sismember("workers", "ghost")
    # The worker deregistered on the way out: its user may delete its own record.
    with redis.Redis.from_url(admin_url) as admin:
        assert not admin.exists(f"worker:w-{transport}")
        admin.srem("workers", "ghost")
    _assert_no_password(worker.log(), router.log(), created.stdout, created.stderr)
    assert "password=***" in router.log()  # the redacted URL it logged at start


def test_the_worker_user_can_write_nothing_but_the_registry(secured: SecuredRedis) -> None:
    with redis.Redis.from_url(secured.url(f"worker:{WORKER_PASSWORD}")) as as_worker:
        for forbidden in (("SET", "apikey:abc", "x"), ("HSET", "apikey:abc", "project_id", "p")):
            with pytest.raises(NoPermissionError):
                as_worker.execute_command(*forbidden)
        with pytest.raises(NoPermissionError):
            as_worker.execute_command("HGETALL", "apikey:abc")


@pytest.mark.timeout(90)
def test_a_wrong_password_fails_clearly_without_showing_it(
    secured: SecuredRedis, tmp_path: Path
) -> None:
    refused = _admin(secured.url(f":{WRONG_PASSWORD}"), "project", "list")
    assert refused.returncode == 1
    assert "invalid username-password pair" in refused.stderr
    _assert_no_password(refused.stdout, refused.stderr)

    worker = worker_process(
        tmp_path, secured.url(f"worker:{WRONG_PASSWORD}"), "w-wrong", engine="fake"
    )
    router = router_process(tmp_path, secured.url("router", query=f"password={WRONG_PASSWORD}"))
    with running(worker, router):  # both stay up, serving what they can, and keep retrying
        wait_until(
            lambda: (
                "invalid username-password pair" in worker.log() + router.log()
                and "registry: full read failed: AuthenticationError" in router.log()
                and "could not register worker w-wrong" in worker.log()
            ),
            15,
            "both to log the refusal",
        )
        assert http_json(router.url + "/health")[1]["workers"] == 0
        assert post_chat(router.url)[0] == 503
        time.sleep(0.5)
    _assert_no_password(worker.log(), router.log())
    with redis.Redis.from_url(secured.url(f":{ADMIN_PASSWORD}")) as admin:
        assert not admin.exists("worker:w-wrong")


@pytest.mark.parametrize(
    ("url", "logged"),
    [
        ("redis://r:6379/0", "redis://r:6379/0"),
        ("redis://:s3cret@r:6379/0", "redis://***@r:6379/0"),
        ("redis://router:s3cret@r:6379/0", "redis://router:***@r:6379/0"),
        ("redis://s3cret@r/0", "redis://***@r/0"),  # no colon: it may be a bare password
        ("redis://r:6379/0?password=s3cret", "redis://r:6379/0?password=***"),
        (
            "rediss://router@r:6380/0?db=1&Password=s3cret&ssl_ca_certs=/ca.crt",
            "rediss://***@r:6380/0?db=1&Password=***&ssl_ca_certs=/ca.crt",
        ),
        ("redis://u:s3cret@r/0?ssl_password=s3cret", "redis://u:***@r/0?ssl_password=***"),
        (
            "unix://:s3cret@/run/redis.sock?password=s3cret",
            "unix://***@/run/redis.sock?password=***",
        ),
        ("redis://:s3cret@[::1/0", "<redis URL hidden: it does not parse>"),
    ],
)
def test_the_router_redacts_every_password_form(url: str, logged: str) -> None:
    assert _redacted(url) == logged
    assert "s3cret" not in _redacted(url)


LOG_CALLS = frozenset({"debug", "info", "warning", "error", "exception", "critical", "print"})


def _names_a_redis_url(node: ast.AST) -> bool:
    """`node` mentions something called redis_url outside a `_redacted(...)` call."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_redacted":
        return False
    if isinstance(node, ast.Name) and "redis_url" in node.id:
        return True
    if isinstance(node, ast.Attribute) and "redis_url" in node.attr:
        return True
    return any(_names_a_redis_url(child) for child in ast.iter_child_nodes(node))


def test_nothing_logs_or_prints_a_redis_url_unredacted() -> None:
    offenders: list[str] = []
    for package in ("router", "worker", "contract", "benchmarks", "deploy"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                arguments = [*node.args, *(k.value for k in node.keywords)]
                if name in LOG_CALLS and any(_names_a_redis_url(a) for a in arguments):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not offenders, offenders
