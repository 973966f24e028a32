"""Stock llama-servers as workers, end to end: two real `llama-server` processes on SmolLM2, each
registered by `python -m worker.agent`, behind a real router with auth on and the worker secret
(given to llama-server as its --api-key), driven through the openai SDK.

Needs the llama-server built from the sources llama-cpp-python vendors: $LLAMA_SERVER_BIN, else
benchmarks.external_worker.DEFAULT_SERVER_BIN; skipped without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from redis.asyncio import Redis

from benchmarks.external_worker import agent_service, llama_server_bin, llama_server_service
from benchmarks.processes import http_status, router_sees
from contract.registry import read_snapshot
from router import tenant_admin
from tests.processes import (
    MODEL_ID,
    MODEL_PATH,
    HttpService,
    RedisServer,
    free_port,
    router_process,
    wait_until,
)
from worker.config import resolve_model_path

SERVER_BIN = llama_server_bin()
pytestmark = [
    pytest.mark.llama,
    pytest.mark.skipif(
        SERVER_BIN is None, reason="no llama-server: set LLAMA_SERVER_BIN (see module docstring)"
    ),
]
SECRET = "external-worker-secret"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colours."}]


@dataclass
class Deployment:
    tmp: Path
    redis: RedisServer
    router: HttpService
    servers: list[HttpService]
    agents: list[HttpService]
    project_id: str
    key: str
    metered_key: str
    metered_key_id: str

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.router.url}/{self.project_id}/gen/v1",
            api_key=key or self.key,
            max_retries=0,
            timeout=60,
        )

    def start_agent(self, i: int) -> HttpService:
        agent = agent_service(
            self.tmp, f"agent{i}-{time.monotonic_ns()}", self.servers[i].url, self.redis.url,
            model_id=MODEL_ID,
            options=("--worker-secret-file", str(self.tmp / "secret"), "--drain-timeout-s", "5"),
        )  # fmt: skip
        agent.start()
        self.agents[i] = agent
        return agent


async def _tenant(redis_url: str) -> tuple[str, str, str, str]:
    redis: Redis[bytes] = Redis.from_url(redis_url)
    try:
        project = await tenant_admin.create_project(redis, "Acme")
        await tenant_admin.create_endpoint(redis, project.project_id, "gen", [MODEL_ID])
        key = await tenant_admin.create_key(redis, project.project_id, name="tests")
        metered = await tenant_admin.create_key(redis, project.project_id, tpm=100_000)
        return project.project_id, key.key, metered.key, metered.record.key_id
    finally:
        await redis.aclose()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    assert SERVER_BIN is not None
    tmp = tmp_path_factory.mktemp("external")
    (tmp / "secret").write_text(SECRET)
    redis = RedisServer.create(tmp)
    redis.start()
    servers = [
        llama_server_service(
            tmp, f"llama-server{i}", SERVER_BIN, slots=2, n_ctx=512, api_key_file=tmp / "secret"
        )
        for i in range(2)
    ]
    secret_flag = ("--worker-secret-file", str(tmp / "secret"))
    router = router_process(tmp, redis.url, extra=secret_flag, auth=True)
    deployment = Deployment(tmp, redis, router, servers, [router, router], "", "", "", "")
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_healthy(timeout_s=120)
        for i in range(2):
            deployment.start_agent(i)
        router.start()
        router.wait_healthy(timeout_s=60)
        wait_until(lambda: router_sees(router.url, 2), 20, "the router to see both servers")
        tenant = asyncio.run(_tenant(redis.url))
        deployment.project_id, deployment.key, deployment.metered_key = tenant[:3]
        deployment.metered_key_id = tenant[3]
        yield deployment
    finally:
        for proc in [router, *deployment.agents, *servers, redis]:
            proc.stop()


def busy_slots(server: HttpService) -> int:
    """Requests llama-server is processing now (its /metrics)."""
    import urllib.request

    request = urllib.request.Request(
        server.url + "/metrics", headers={"Authorization": f"Bearer {SECRET}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^llamacpp:requests_processing (\S+)$", text, re.M)
    return int(float(found.group(1))) if found else -1


def predicted(server: HttpService) -> float:
    import urllib.request

    request = urllib.request.Request(
        server.url + "/metrics", headers={"Authorization": f"Bearer {SECRET}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^llamacpp:tokens_predicted_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else -1.0


def test_plain_and_streamed_answers(deployment: Deployment) -> None:
    with deployment.client() as client:
        plain = client.chat.completions.create(
            model=MODEL_ID,
            messages=MESSAGES,
            max_tokens=8,
            temperature=0,
        )
        assert plain.choices[0].message.content
        assert plain.usage is not None and plain.usage.completion_tokens > 0
        stream = client.chat.completions.create(
            model=MODEL_ID, messages=MESSAGES, max_tokens=8, stream=True,
        )  # fmt: skip
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert all(c.usage is None for c in chunks)


def test_workers_refuse_requests_without_the_secret(deployment: Deployment) -> None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        deployment.servers[0].url + "/v1/chat/completions", data=b"{}", method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    caught.value.close()
    assert caught.value.code == 401


def test_a_metered_key_is_charged_the_exact_usage_and_sees_no_usage_chunk(
    deployment: Deployment,
) -> None:
    with deployment.client(deployment.metered_key) as client:
        chunks = list(
            client.chat.completions.create(
                model=MODEL_ID, messages=MESSAGES, max_tokens=12, temperature=0,
                stream=True,
            )
        )  # fmt: skip
        assert all(c.usage is None for c in chunks)  # the router's usage chunk was hidden
        asked = list(
            client.chat.completions.create(
                model=MODEL_ID, messages=MESSAGES, max_tokens=12, temperature=0,
                stream=True, stream_options={"include_usage": True},
            )
        )  # fmt: skip
    usage = asked[-1].usage
    assert usage is not None and not asked[-1].choices
    # Greedy and same prompt: both requests used the same tokens.
    expected = {"prompt_tokens": 2 * usage.prompt_tokens,
                "completion_tokens": 2 * usage.completion_tokens}  # fmt: skip

    async def charged() -> dict[str, int]:
        redis: Redis[bytes] = Redis.from_url(deployment.redis.url)
        try:
            raw = await redis.hgetall(f"usage:key:{deployment.metered_key_id}")
        finally:
            await redis.aclose()  # type: ignore[attr-defined]
        return {k.decode(): int(v) for k, v in raw.items()}

    def settled() -> bool:
        return asyncio.run(charged()).get("requests", 0) >= 2

    wait_until(settled, 10, "both requests settled")
    got = asyncio.run(charged())
    assert {k: got[k] for k in expected} == expected


def test_a_client_that_hangs_up_frees_the_slot(deployment: Deployment) -> None:
    with deployment.client() as client:
        stream = client.chat.completions.create(
            model=MODEL_ID, messages=MESSAGES, max_tokens=400, stream=True,
        )  # fmt: skip
        next(iter(stream))
        assert sum(busy_slots(s) for s in deployment.servers) == 1
        stream.close()
    wait_until(lambda: sum(busy_slots(s) for s in deployment.servers) == 0, 10, "the slot to free")


def test_a_drained_agent_leaves_and_its_server_gets_nothing(deployment: Deployment) -> None:
    agent = deployment.agents[0]
    agent.signal(signal.SIGTERM)
    assert agent.proc is not None and agent.proc.wait(15) == 0

    async def registered() -> set[str]:
        redis: Redis[bytes] = Redis.from_url(deployment.redis.url)
        try:
            return set((await read_snapshot(redis)).workers)
        finally:
            await redis.aclose()  # type: ignore[attr-defined]

    assert agent.name not in asyncio.run(registered())
    wait_until(lambda: router_sees(deployment.router.url, 1), 10, "the router to drop it")
    before = predicted(deployment.servers[0])
    with deployment.client() as client:
        for _ in range(3):
            client.chat.completions.create(
                model=MODEL_ID,
                messages=MESSAGES,
                max_tokens=4,
            )
    assert predicted(deployment.servers[0]) == before
    deployment.start_agent(0)
    wait_until(lambda: router_sees(deployment.router.url, 2), 20, "the agent back")


def test_kill_9_of_a_server_under_load_fails_over_or_fails_cleanly(
    deployment: Deployment,
) -> None:
    """Runs last: it kills llama-server1 for good."""

    def one(i: int) -> str:
        with deployment.client() as client:
            try:
                stream = client.chat.completions.create(
                    model=MODEL_ID, messages=MESSAGES, max_tokens=64, stream=True,
                )  # fmt: skip
                list(stream)
            except openai.APIError as exc:
                return f"error {type(exc).__name__}"
        return "ok"

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(one, i) for i in range(6)]
        time.sleep(0.5)
        victim = deployment.servers[1]
        victim.kill()
        outcomes = [f.result(timeout=60) for f in futures]  # nothing hangs
    assert all(o == "ok" or o.startswith("error") for o in outcomes)
    assert http_status(deployment.router.url + "/health") == 200
    with deployment.client() as client:  # after the kill, every request is served
        for _ in range(4):
            answer = client.chat.completions.create(
                model=MODEL_ID,
                messages=MESSAGES,
                max_tokens=4,
            )
            assert answer.choices[0].message.content is not None


README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### Use your own llama-server"


def readme_recipe() -> tuple[list[str], str]:
    """The section's shell commands and its Python snippet, as written."""
    text = README.read_text().split(SECTION, 1)[1].split("\n### ", 1)[0]
    shell = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    python = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert shell and python, f"README's {SECTION!r} lacks its bash or python block"
    return shell[1].strip().splitlines(), python[1]


def test_the_readme_recipe_runs_as_written(tmp_path: Path) -> None:
    """Ports, the secret file and the model are swapped for this test's; the rest is README."""
    assert SERVER_BIN is not None
    commands, snippet = readme_recipe()
    ports = {p: str(free_port()) for p in ("8081", "6379", "8080")}
    swaps = {**ports, "SmolLM2-135M-Instruct.Q4_1.gguf": resolve_model_path(MODEL_PATH)}
    secret_file = str(tmp_path / "worker-secret")

    def swapped(command: str) -> list[str]:
        for old, new in swaps.items():
            command = command.replace(old, new)
        command = re.sub(r"(?<= )worker-secret(?= |$)", secret_file, command)
        words = shlex.split(command.removesuffix("&"))
        return [{"python": sys.executable, "llama-server": SERVER_BIN}.get(words[0], words[0]),
                *words[1:]]  # fmt: skip

    assert commands[0].startswith("echo "), commands[0]
    secret = shlex.split(commands[0])[1]
    (tmp_path / "worker-secret").write_text(secret + "\n")  # what the echo line writes
    names = ("llama-server", "redis", "agent", "router")
    procs = [HttpService(n, swapped(c), tmp_path / f"{n}.log", 0)
             for n, c in zip(names, commands[1:], strict=True)]  # fmt: skip
    procs[0].port, procs[3].port = int(ports["8081"]), int(ports["8080"])
    try:
        for proc in procs:
            proc.start()
        procs[0].wait_healthy(120)
        procs[3].wait_healthy(60)
        wait_until(lambda: router_sees(procs[3].url, 1), 20, "the router to see llama-server")
        for old, new in ports.items():
            snippet = snippet.replace(old, new)
        ran = subprocess.run(
            [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.strip(), "the model answered nothing"
    finally:
        for proc in reversed(procs):
            proc.stop()
