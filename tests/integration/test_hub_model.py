"""README's "Serve a model from the hub", run as written: a real worker started offline with
`--model-path hf:...` from a hub cache, a router, the openai SDK.

There is no network here, so the cache the recipe's `fetch` would download into is filled by
hand first (tests.worker.hub_cache: the default model's GGUF under the repository, commit and
sha256 it has on the hub), and `fetch` runs with HF_HUB_OFFLINE=1: it then only verifies. The
recipe's ports and paths are swapped for free ones; everything else is the README's text.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from benchmarks.processes import Process, redis_ping, router_sees
from tests.processes import HttpService, free_port, wait_until
from tests.worker.hub_cache import SMOLLM_FILE, SMOLLM_REPO, fill_hub_cache, smollm_gguf

pytest.importorskip("llama_cpp", reason="the real worker needs llama-cpp-python")
pytest.importorskip("huggingface_hub", reason="hf: model paths need the `hub` extra")
pytestmark = pytest.mark.llama

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### Serve a model from the hub"
OFFLINE = {"HF_HUB_OFFLINE": "1"}


def recipe() -> tuple[list[str], str]:
    """The section's shell commands (continuations joined) and its Python snippet."""
    text = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    python = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert shell and python, f"README's {SECTION!r} lacks its bash or python block"
    commands = shell[1].replace("\\\n", " ").strip().splitlines()
    return [" ".join(c.split()) for c in commands], python[1]


@dataclass
class Recipe:
    """The recipe's text with this test's ports and paths."""

    tmp: Path
    swaps: dict[str, str]

    def text(self, command: str) -> str:
        for old, new in self.swaps.items():
            command = command.replace(old, new)
        return command

    def argv(self, command: str) -> tuple[list[str], dict[str, str]]:
        """`command` as argv and environment: leading NAME=VALUE words, `python` as ours."""
        words = shlex.split(self.text(command).removesuffix("&"))
        env = dict(OFFLINE)
        while "=" in words[0]:
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        if words[0] == "python":
            words[0] = sys.executable
        return words, env


@dataclass(frozen=True)
class Served:
    router_url: str
    python_snippet: str
    fetched: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "models"
    fill_hub_cache(cache, SMOLLM_REPO, SMOLLM_FILE, smollm_gguf())
    redis_port, worker_port, router_port = free_port(), free_port(), free_port()
    steps = Recipe(
        tmp,
        {
            "./models": str(cache),
            "6379": str(redis_port),
            "--port 9001": f"--port {worker_port}",
            "8080": str(router_port),
        },
    )
    commands, snippet = recipe()
    assert commands[0].startswith("pip install"), commands[0]  # the test's machine has it
    argv, env = steps.argv(commands[1])
    fetched = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert fetched.returncode == 0, fetched.stderr
    assert len(commands) == 5, commands
    redis = Process("redis", steps.argv(commands[2])[0], tmp / "redis.log", redis_port)
    worker = HttpService("worker", *steps.argv(commands[3])[:1], tmp / "worker.log", worker_port)
    router = HttpService("router", *steps.argv(commands[4])[:1], tmp / "router.log", router_port)
    worker.env, router.env = steps.argv(commands[3])[1], steps.argv(commands[4])[1]
    try:
        redis.start()
        redis.wait_ready(lambda: redis_ping(redis_port), 10, "PING")
        for service in (worker, router):
            service.start()
            service.wait_healthy(timeout_s=90)
        wait_until(lambda: router_sees(router.url, 1), 10, "the router to see the worker")
        yield Served(router.url, steps.text(snippet), fetched.stdout.strip())
    finally:
        for process in (router, worker, redis):
            process.stop()


def test_the_fetch_step_prints_the_cached_snapshot(served: Served) -> None:
    snapshot = rf"/models/models--[^/]+/snapshots/[0-9a-f]{{40}}/{re.escape(SMOLLM_FILE)}$"
    assert re.search(snapshot, served.fetched), served.fetched
    assert Path(served.fetched).resolve() == smollm_gguf().resolve()


def test_the_readme_client_gets_an_answer(served: Served) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", served.python_snippet], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip(), "the model answered nothing"


def test_the_hub_worker_streams_through_the_router(served: Served) -> None:
    client = openai.OpenAI(base_url=f"{served.router_url}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    # Sampled: the model may end before max_tokens.
    assert text and usage is not None and 0 < usage.completion_tokens <= 8
