"""deploy/redis: the ACL template, its two renderers (Python for the local stack, start.sh for
compose and Kubernetes) agreeing byte for byte, and the secrets generator. Whether Redis enforces
the rules is tests/security/test_acl.py's part."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from deploy.local.secrets import StackSecrets
from deploy.local.spec import parse_stack
from deploy.redis import acl
from deploy.redis.secrets import (
    compose_env,
    k8s_secrets,
    main,
    new_passwords,
    role_url,
    write_private,
)
from tests.deploy.tools import DEPLOY

START = DEPLOY / "redis" / "start.sh"


def start_sh(tmp: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """start.sh with the template, its output file read back by the command it runs."""
    out = tmp / "run" / "users.acl"
    variables = {"ACL_TEMPLATE": str(acl.TEMPLATE), "ACL_FILE": str(out), **env}
    return subprocess.run(
        ["sh", str(START), "cat", str(out)],
        env={"PATH": os.environ["PATH"], **variables},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def password_env(passwords: dict[str, str]) -> dict[str, str]:
    return {role.password_var: passwords[role.name] for role in acl.ROLES}


def test_the_template_names_the_prefix_and_one_password_per_role() -> None:
    names = acl.placeholders(acl.template())
    assert names == {acl.PREFIX_VAR} | {role.password_var for role in acl.ROLES}
    text = acl.acl_file("stage:", new_passwords())
    assert "${" not in text and "user default off" in text
    worker = next(line for line in text.splitlines() if line.startswith("user worker "))
    assert "~stage:worker:*" in worker and "apikey" not in worker and "ratelimit" not in worker
    router = next(line for line in text.splitlines() if line.startswith("user router "))
    rules = router.split()
    assert "%R~stage:*" in rules and "~stage:ratelimit:*" in rules and "~stage:*" not in rules


@pytest.mark.parametrize("prefix", ["", "stage:"])
def test_start_sh_renders_what_python_renders(tmp_path: Path, prefix: str) -> None:
    passwords = new_passwords()
    out = start_sh(tmp_path, {acl.PREFIX_VAR: prefix, **password_env(passwords)})
    assert out.returncode == 0, out.stderr
    assert out.stdout == acl.acl_file(prefix, passwords)
    assert stat.S_IMODE((tmp_path / "run" / "users.acl").stat().st_mode) == 0o600


def test_start_sh_reads_a_value_from_a_file(tmp_path: Path) -> None:
    passwords = new_passwords()
    env = {acl.PREFIX_VAR: "", **password_env(passwords)}
    (tmp_path / "admin").write_text(env.pop("REDIS_ADMIN_PASSWORD") + "\n")
    env["REDIS_ADMIN_PASSWORD_FILE"] = str(tmp_path / "admin")
    out = start_sh(tmp_path, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == acl.acl_file("", passwords)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"REDIS_ROUTER_PASSWORD": None}, "REDIS_ROUTER_PASSWORD is not set"),
        ({"REDIS_ROUTER_PASSWORD": ""}, "REDIS_ROUTER_PASSWORD is empty"),
        ({"REDIS_ROUTER_PASSWORD": "a b"}, "must not contain spaces"),
        ({"REDIS_ROUTER_PASSWORD": None, "REDIS_ROUTER_PASSWORD_FILE": "/nonexistent"}, "read"),
    ],
)
def test_start_sh_refuses_to_start_without_good_values(
    tmp_path: Path, change: dict[str, str | None], message: str
) -> None:
    env = {acl.PREFIX_VAR: "", **password_env(new_passwords())}
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    out = start_sh(tmp_path, env)
    assert out.returncode != 0
    assert message in out.stderr
    assert not (tmp_path / "run" / "users.acl").exists()


@pytest.mark.parametrize(
    ("prefix", "password"), [("a*", "p" * 16), ("", "short"), ("", "has space" * 3)]
)
def test_bad_values_are_refused(prefix: str, password: str) -> None:
    passwords = {**new_passwords(), "worker": password}
    with pytest.raises(ValueError):
        acl.acl_file(prefix, passwords)


def test_role_url() -> None:
    assert role_url("redis://redis:6379/0", "worker", "pw") == "redis://worker:pw@redis:6379/0"
    assert role_url("rediss://h:6380/1", "admin", "pw") == "rediss://admin:pw@h:6380/1"
    with pytest.raises(ValueError):
        role_url("redis://user:old@redis:6379/0", "worker", "pw")


def test_k8s_secrets() -> None:
    items = json.loads(k8s_secrets("xero", "redis://redis:6379/0", managed=False))["items"]
    by_name = {s["metadata"]["name"]: s["stringData"] for s in items}
    assert set(by_name) == {"xero-redis", "xero-redis-users", "xero-worker-secret"}
    users = by_name["xero-redis-users"]
    assert by_name["xero-redis"]["router-url"] == role_url(
        "redis://redis:6379/0", "router", users["router"]
    )
    managed = json.loads(k8s_secrets("xero", "rediss://m:6380/0", managed=True))["items"]
    assert "xero-redis-users" not in {s["metadata"]["name"] for s in managed}
    # Fresh every time: nothing to copy from one cluster to the next.
    again = json.loads(k8s_secrets("xero", "redis://redis:6379/0", managed=False))["items"]
    assert again != items


def test_compose_env_is_private_and_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / ".env"
    assert main(["compose", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    names = {line.split("=", 1)[0] for line in out.read_text().splitlines() if "=" in line}
    assert names == {role.password_var for role in acl.ROLES} | {"XERO_WORKER_SECRET"}
    before = out.read_text()
    assert main(["compose", "--out", str(out)]) == 1
    assert out.read_text() == before
    assert compose_env() != compose_env()
    with pytest.raises(FileExistsError):
        write_private(out, "x")


def test_local_stack_secrets(tmp_path: Path) -> None:
    spec = parse_stack({"redis": {"prefix": "dev:"}, "models": [{"id": "m", "engine": "fake"}]})
    secrets = StackSecrets.create(tmp_path, spec)
    assert stat.S_IMODE(secrets.folder.stat().st_mode) == 0o700
    assert secrets.acl_file.read_text() == acl.acl_file("dev:", secrets.passwords)
    loaded = StackSecrets.load(tmp_path)
    assert loaded is not None and loaded.passwords == secrets.passwords
    assert secrets.env("worker", spec.redis_url)["REDIS_URL"].startswith("redis://worker:")
    assert secrets.env("router", spec.redis_url)["REDIS_URL"].startswith("redis://router:")
    assert secrets.env("redis-exporter", spec.redis_url) == {
        "REDIS_PASSWORD": secrets.passwords["exporter"]
    }
    assert secrets.env("nginx", spec.redis_url) == {}
    again = StackSecrets.create(tmp_path, spec)  # a new `up`: new passwords
    assert again.passwords != secrets.passwords
