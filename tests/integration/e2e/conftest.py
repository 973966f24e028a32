"""The real stack: redis-server, llama.cpp workers on SmolLM2, and a router, as processes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.processes import router_sees
from tests.processes import HttpService, RedisServer, router_process, wait_until, worker_process

pytest.importorskip("llama_cpp", reason="the real stack needs llama-cpp-python")


@dataclass
class Stack:
    redis: RedisServer
    workers: list[HttpService]
    router: HttpService

    @property
    def base_url(self) -> str:
        return self.router.url + "/v1"


def start_stack(tmp: Path, n_workers: int = 2) -> Stack:
    redis = RedisServer.create(tmp)
    redis.start()
    workers = [worker_process(tmp, redis.url, f"w{i}") for i in range(n_workers)]
    router = router_process(tmp, redis.url)
    stack = Stack(redis, workers, router)
    try:
        for proc in [*workers, router]:
            proc.start()
        for proc in [*workers, router]:
            proc.wait_healthy(timeout_s=60)
        wait_until(lambda: router_sees(router.url, n_workers), 10, "the router to see every worker")
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    for proc in [stack.router, *stack.workers, stack.redis]:
        proc.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack shared by the tests of a module that only send requests to it."""
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    stop_stack(s)


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack for one test that breaks it (kills a worker)."""
    s = start_stack(tmp_path)
    yield s
    stop_stack(s)
