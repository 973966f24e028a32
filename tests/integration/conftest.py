"""A real stack for the OpenAI-fidelity suites: redis-server, one real SmolLM2 worker of each
llama engine, and a router with auth on and a base domain, as processes; a project whose
endpoint `gen` serves the model, and a key of it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from redis.asyncio import Redis

from benchmarks.processes import router_sees
from router import tenant_admin
from tests.processes import (
    MODEL_ID,
    HttpService,
    RedisServer,
    router_process,
    wait_until,
    worker_process,
)

BASE_DOMAIN = "api.localtest"


@dataclass(frozen=True)
class Served:
    router_url: str
    project_id: str
    key: str

    @property
    def path_based(self) -> str:
        return f"{self.router_url}/{self.project_id}/gen/v1"

    @property
    def dns_host(self) -> str:
        """The Host of the DNS-based URL (the name does not resolve here: send it as a header)."""
        return f"gen.{self.project_id.lower()}.{BASE_DOMAIN}"


async def _tenant(redis_url: str) -> tuple[str, str]:
    redis: Redis[bytes] = Redis.from_url(redis_url)
    try:
        project = await tenant_admin.create_project(redis, "Acme")
        await tenant_admin.create_endpoint(redis, project.project_id, "gen", [MODEL_ID])
        key = await tenant_admin.create_key(redis, project.project_id, name="tests")
        return project.project_id, key.key
    finally:
        await redis.aclose()  # type: ignore[attr-defined]


@pytest.fixture(scope="module", params=["llama", "batched"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    tmp: Path = tmp_path_factory.mktemp(f"served-{request.param}")
    redis = RedisServer.create(tmp)
    redis.start()
    worker = worker_process(tmp, redis.url, "w0", engine=request.param)
    router = router_process(tmp, redis.url, extra=("--base-domain", BASE_DOMAIN), auth=True)
    procs: list[HttpService] = [worker, router]
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.wait_healthy(timeout_s=60)
        wait_until(lambda: router_sees(router.url, 1), 10, "the router to see the worker")
        project_id, key = asyncio.run(_tenant(redis.url))
        yield Served(router.url, project_id, key)
    finally:
        for service in [router, worker, redis]:
            service.stop()


@pytest.fixture
def client(served: Served) -> Iterator[openai.OpenAI]:
    """The openai SDK on the path-based URL, with the project's key."""
    with openai.OpenAI(
        base_url=served.path_based, api_key=served.key, max_retries=0, timeout=60
    ) as c:
        yield c


@pytest.fixture
def dns_client(served: Served) -> Iterator[openai.OpenAI]:
    """The openai SDK on the DNS-based URL (the router's address, the endpoint's Host)."""
    with openai.OpenAI(
        base_url=served.router_url + "/v1",
        api_key=served.key,
        default_headers={"Host": served.dns_host},
        max_retries=0,
        timeout=60,
    ) as c:
        yield c
