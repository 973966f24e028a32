"""The admin CLI, in-process through main(argv) and once as a real `python -m` process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from redis.asyncio import Redis

from contract.errors import AuthenticationFailed
from router.admin import main
from router.apikeys import authenticate
from router.ratelimit import RateLimiter
from router.tenants import KeyRecord


class Cli:
    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self.capsys = capsys
        self.err = ""

    def __call__(self, *argv: str, rc: int = 0) -> str:
        """stdout of a run that exits rc == 0, or stderr of one that fails."""
        code = main(["--redis-url", self.url, *argv])
        out, self.err = self.capsys.readouterr()
        assert code == rc, self.err
        return out if rc == 0 else self.err

    def json(self, *argv: str) -> Any:
        return json.loads(self(*argv, "--json"))


@pytest.fixture
def cli(redis_url: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(redis_url, capsys)


def _authenticate(url: str, key: str) -> KeyRecord:
    async def run() -> KeyRecord:
        redis: Redis[bytes] = Redis.from_url(url)
        try:
            return await authenticate(redis, key)
        finally:
            await redis.aclose()  # type: ignore[attr-defined]

    return asyncio.run(run())


def test_round_trip_json(cli: Cli) -> None:
    project = cli.json("project", "create", "Acme Prod")
    pid = project["project_id"]
    assert project["slug"] == "acme-prod"
    assert cli.json("project", "list") == [project]

    endpoint = cli.json("endpoint", "create", pid, "chat", "--model", "m1", "--model", "m2")
    assert endpoint["models"] == ["m1", "m2"]
    assert cli.json("endpoint", "list", pid) == [endpoint]

    created = cli.json(
        "key", "create", pid, "--name", "ci", "--rpm", "60", "--tpm", "5000", "--expires-in", "1h"
    )
    key = created.pop("key")
    assert key.startswith("xero_acme-prod_") and created["prefix"] == key[: len(created["prefix"])]
    assert created["rpm"] == 60 and created["tpm"] == 5000 and created["status"] == "active"
    # One hour from when the CLI read its clock, a moment before the key was stamped created.
    assert 0 <= 3_600_000 - (created["expires_ms"] - created["created_ms"]) < 5_000
    assert _authenticate(cli.url, key).key_id == created["key_id"]

    listed = cli.json("key", "list", pid)
    counts = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
    assert listed == [{**created, **counts}]  # the same metadata, without the key
    assert key not in json.dumps(listed)

    revoked = cli.json("key", "revoke", created["key_id"])
    assert revoked["status"] == "revoked" and revoked["revoked_ms"] is not None
    with pytest.raises(AuthenticationFailed):
        _authenticate(cli.url, key)

    assert cli.json("key", "delete", created["key_id"]) == {"deleted": created["key_id"]}
    assert cli.json("key", "list", pid) == []
    assert cli.json("endpoint", "delete", pid, "chat") == {"deleted": "chat"}
    assert cli.json("project", "delete", pid) == {"deleted": pid}
    assert cli.json("project", "list") == []


def test_text_output_and_option_positions(cli: Cli) -> None:
    pid = cli.json("project", "create", "demo")["project_id"]
    # --json before the subcommand works as well as after it.
    assert json.loads(cli("--json", "endpoint", "list", pid)) == []
    out = cli("key", "create", pid, "--name", "laptop")
    key = out.rsplit("key: ", 1)[1].strip()
    assert key.startswith("xero_demo_")
    assert "Store this key now" in cli.err
    table = cli("key", "list", pid)
    assert "laptop" in table and "active" in table and key not in table
    assert cli("endpoint", "list", pid).strip() == "(none)"


def test_errors(cli: Cli) -> None:
    assert "not found" in cli("project", "delete", "proj_NOPE", rc=1)
    assert "not found" in cli("key", "revoke", "key_nope", rc=1)
    pid = cli.json("project", "create", "demo")["project_id"]
    cli("endpoint", "create", pid, "chat", "--model", "m")
    assert "already exists" in cli("endpoint", "create", pid, "chat", "--model", "m", rc=1)
    assert "DNS label" in cli("endpoint", "create", pid, "Bad_Name", "--model", "m", rc=1)
    assert "--rpm" in cli("key", "create", pid, "--rpm", "0", rc=2)
    assert "duration" in cli("key", "create", pid, "--expires-in", "soon", rc=2)
    assert "required" in cli("endpoint", "create", pid, "x", rc=2)
    assert main(["--redis-url", "redis://127.0.0.1:1/0", "project", "list"]) == 1


def test_concurrency_limit_and_usage(cli: Cli, redis_url: str) -> None:
    pid = cli.json("project", "create", "Acme")["project_id"]
    created = cli.json("key", "create", pid, "--max-concurrent", "3")
    assert created["max_concurrent"] == 3
    assert "--max-concurrent" in cli("key", "create", pid, "--max-concurrent", "0", rc=2)

    async def settle() -> None:
        redis: Redis[bytes] = Redis.from_url(redis_url)
        try:
            await RateLimiter(redis).settle(created["key_id"], pid, (12, 30))
        finally:
            await redis.aclose()  # type: ignore[attr-defined]

    asyncio.run(settle())
    [listed] = cli.json("key", "list", pid)
    assert (listed["max_concurrent"], listed["prompt_tokens"], listed["completion_tokens"]) == (
        3, 12, 30,
    )  # fmt: skip
    used = cli.json("usage", pid)
    assert (used["prompt_tokens"], used["completion_tokens"], used["requests"]) == (12, 30, 1)
    assert used["keys"] == [
        {"key_id": created["key_id"], "prompt_tokens": 12, "completion_tokens": 30, "requests": 1}
    ]
    table = cli("usage", pid).splitlines()
    assert table[0].split() == ["key_id", "project_id", "prompt_tokens", "completion_tokens",
                                "requests"]  # fmt: skip
    assert table[1].split() == ["(project)", pid, "12", "30", "1"]
    assert table[2].split()[0] == created["key_id"]
    assert "not found" in cli("usage", "proj_NOPE", rc=1)


def test_redis_prefix_names_another_deployment(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = cli.json("--redis-prefix", "staging:", "project", "create", "Acme")
    assert cli.json("project", "list") == []
    assert cli.json("project", "list", "--redis-prefix", "staging:") == [staging]
    monkeypatch.setenv("ROUTER_REDIS_PREFIX", "staging:")
    assert cli.json("project", "list") == [staging]  # parsed again: the environment's prefix
    assert "redis_prefix" in cli("--redis-prefix", "bad*", "project", "list", rc=2)


def test_python_dash_m(redis_url: str) -> None:
    env = {**os.environ, "REDIS_URL": redis_url}
    args = [sys.executable, "-m", "router.admin", "project", "create", "cli", "--json"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(done.stdout)["slug"] == "cli"
