"""Only the router talks to workers: router and worker share a secret from the environment; a
direct call to the worker without it (or with a wrong one) is refused 401 and logged, through the
router it is served, /health stays open, and the secret can be given neither on the command line
nor be found in a log."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from benchmarks.processes import REPO_ROOT, http_json, router_sees, wait_until
from contract.options import ConfigError
from router.config import RouterConfig
from tests.processes import MODEL_ID, RedisServer, router_process, worker_process
from worker.auth import load_secret

from .services import CHAT, post_chat, running

SECRET = "xero-worker-secret-4f1c9a"
ENV = {"XERO_WORKER_SECRET": SECRET}


def _direct(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    """A chat completion straight to a worker, as anything in the cluster could send it."""
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    request = urllib.request.Request(
        url + CHAT,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@pytest.mark.timeout(60)
def test_a_worker_serves_the_router_and_refuses_everyone_else(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    worker = worker_process(tmp_path, redis_server.url, "w-trust", engine="fake")
    router = router_process(tmp_path, redis_server.url)
    worker.env = router.env = ENV
    with running(worker, router):
        wait_until(lambda: router_sees(router.url, 1), 10, "the router to see the worker")

        for headers in ({}, {"Authorization": "Bearer not-the-secret"}):
            status, body = _direct(worker.url, headers)
            assert status == 401, body
            assert body["error"]["code"] == "invalid_api_key"
        status, body = post_chat(router.url)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"]
        assert http_json(worker.url + "/health")[0] == 200  # probes need no secret

        log = worker.log()
        assert re.search(r"refused POST /v1/chat/completions from 127\.0\.0\.1", log)
        for text in (log, router.log()):
            assert SECRET not in text


@pytest.mark.parametrize("program", ["worker", "router"])
def test_the_secret_cannot_be_given_on_the_command_line(program: str) -> None:
    base = ["--redis-url", "redis://127.0.0.1:1"]
    if program == "worker":
        base += ["--model-id", MODEL_ID, "--engine", "fake"]
    usage = _run(program, [*base, "--help"])
    assert usage.returncode == 0
    # The one secret option takes a file; no flag takes the secret itself.
    assert "--worker-secret-file PATH" in usage.stdout
    assert not re.search(r"--worker-secret(?!-file)", usage.stdout)
    assert SECRET not in _run(program, [*base, "--help"], ENV).stdout  # nor shows it
    # No prefix of a flag stands for it (argparse would take `--worker-secret` for
    # `--worker-secret-file`): an unknown flag, named but its value never quoted back.
    tried = _run(program, [*base, "--worker-secret", SECRET])
    assert tried.returncode == 2
    assert "unrecognized arguments: --worker-secret" in tried.stderr
    assert SECRET not in tried.stderr + tried.stdout


def _run(
    program: str, argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", program, *argv],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_router_and_worker_read_the_secret_alike(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    by_file = RouterConfig(redis_url="redis://127.0.0.1:1", worker_secret_file=str(path))
    by_env = RouterConfig(redis_url="redis://127.0.0.1:1")
    for env in (ENV, {}):
        assert by_file.worker_secret(env) == load_secret(str(path), env) == SECRET
    assert by_env.worker_secret(ENV) == load_secret(None, ENV) == SECRET
    assert by_env.worker_secret({}) is load_secret(None, {}) is None
    assert SECRET not in repr(by_file)
    path.write_text(" \n")
    with pytest.raises(ConfigError, match="empty"):
        by_file.worker_secret({})
