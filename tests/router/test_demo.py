"""The demo tenant against a real Redis: made once, reused, repaired; its env file and text.

The URLs it prints are called for real in tests/integration/test_tenancy.py.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from redis.asyncio import Redis

from contract.keyspace import Keyspace
from router import demo, tenant_admin
from router.demo import DemoSpec, provision


async def test_made_once_then_reused(redis: Redis[bytes], tmp_path: Path) -> None:
    env_file = tmp_path / "run" / "demo.env"
    spec = DemoSpec(models=("m1",), env_file=env_file)
    first = await provision(redis, spec)
    made = (first["project_created"], first["endpoint_status"], first["key_created"])
    assert made == (True, "created", True)
    assert first["project_name"] == "demo" and first["endpoint"] == "chat"
    assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
    assert f"DEMO_KEY={first['key']}\n" in env_file.read_text()

    again = await provision(redis, spec)
    assert (again["project_created"], again["endpoint_status"], again["key_created"]) == (
        False,
        "existing",
        False,
    )
    assert {k: again[k] for k in ("project_id", "key", "key_id")} == {
        k: first[k] for k in ("project_id", "key", "key_id")
    }
    assert len(await tenant_admin.list_projects(redis)) == 1


async def test_repairs_what_no_longer_fits(redis: Redis[bytes], tmp_path: Path) -> None:
    env_file = tmp_path / "demo.env"
    first = await provision(redis, DemoSpec(models=("m1",), env_file=env_file))
    # A model the endpoint lacks re-creates it; a revoked saved key is replaced.
    await tenant_admin.revoke_key(redis, first["key_id"])
    second = await provision(redis, DemoSpec(models=("m1", "m2"), env_file=env_file))
    assert second["endpoint_status"] == "replaced" and second["models"] == ["m1", "m2"]
    assert second["key_created"] and second["key"] != first["key"]
    assert f"DEMO_KEY={second['key']}\n" in env_file.read_text()
    # A saved key of another project is not reused for this one.
    other = await provision(redis, DemoSpec(models=("m1",), project="other", env_file=env_file))
    assert other["project_created"] and other["key_created"]
    # Without an env file, every run mints a key.
    bare = [await provision(redis, DemoSpec(models=("m1",))) for _ in range(2)]
    assert all(r["key_created"] and r["env_file"] is None for r in bare)


async def test_urls_and_rendering(redis: Redis[bytes]) -> None:
    spec = DemoSpec(
        models=("m1",), router_url="http://127.0.0.1:9000/", base_domain="api.localtest"
    )
    result = await provision(redis, spec)
    pid = result["project_id"]
    assert result["plain_base_url"] == "http://127.0.0.1:9000/v1"
    assert result["path_base_url"] == f"http://127.0.0.1:9000/{pid}/chat/v1"
    assert result["dns_host"] == f"chat.{pid.lower()}.api.localtest"
    assert result["dns_base_url"] == f"http://chat.{pid.lower()}.api.localtest:9000/v1"
    text = demo.render(result)
    assert f"API key:  {result['key']}" in text
    assert "Store this key now" in text  # no env file keeps it
    assert f'-H "Host: {result["dns_host"]}"' in text
    assert f"base_url={result['path_base_url']}" in text

    plain = demo.render(await provision(redis, DemoSpec(models=("m1",))))
    assert "start the router with --base-domain DOMAIN" in plain


async def test_made_under_the_deployments_prefix(redis: Redis[bytes], tmp_path: Path) -> None:
    staging = Keyspace("staging:")
    spec = DemoSpec(models=("m1",), env_file=tmp_path / "demo.env", keyspace=staging)
    first = await provision(redis, spec)
    assert all(name.startswith(b"staging:") for name in await redis.keys("*"))
    assert await tenant_admin.list_projects(redis) == []
    again = await provision(redis, spec)  # found again under the prefix: reused
    assert (again["project_created"], again["key_created"]) == (False, False)
    assert again["key"] == first["key"]
