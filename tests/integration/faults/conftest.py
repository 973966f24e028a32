"""Fault-injection fixtures: a real redis-server, fake-engine workers and routers as processes.

`fleet` starts what a test asks for and, whatever happens, stops every process it started by
its PID (SIGTERM, then SIGKILL after a bound). Blocking waits (process start, health polls) run
in a thread when called from a test's event loop, so the load keeps flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarks.processes import router_sees
from tests.processes import HttpService, RedisServer, router_process, wait_until, worker_process

WORKER_ARGS = (
    "--slots",
    "4",
    "--fake-ttft-ms",
    "10",
    "--fake-tokens-per-s",
    "100",
    "--drain-timeout-s",
    "10",
)
ROUTER_ARGS = (
    "--registry-refresh-s",
    "0.5",
    "--breaker-open-s",
    "0.5",
    "--first-token-timeout-s",
    "10",
    "--read-timeout-s",
    "5",
    "--queue-timeout-s",
    "10",
    "--shutdown-timeout-s",
    "10",
)


@dataclass
class Fleet:
    tmp: Path
    redis: RedisServer
    started: list[HttpService] = field(default_factory=list)

    def worker(self, worker_id: str, *extra: str) -> HttpService:
        """Start a fake-engine worker and wait until it answers /health."""
        proc = worker_process(
            self.tmp, self.redis.url, worker_id, engine="fake", extra=(*WORKER_ARGS, *extra)
        )
        self.started.append(proc)
        proc.start()
        proc.wait_healthy(timeout_s=30)
        return proc

    def router(self, *extra: str, workers: int = 0) -> HttpService:
        """Start a router and wait until it sees `workers` workers."""
        proc = router_process(self.tmp, self.redis.url, extra=(*ROUTER_ARGS, *extra))
        self.started.append(proc)
        proc.start()
        proc.wait_healthy(timeout_s=30)
        self.wait_workers(proc, workers)
        return proc

    def wait_workers(self, router: HttpService, n: int, timeout_s: float = 15) -> None:
        wait_until(lambda: router_sees(router.url, n), timeout_s, f"the router to see {n} workers")

    async def aworker(self, worker_id: str, *extra: str) -> HttpService:
        return await asyncio.to_thread(self.worker, worker_id, *extra)

    async def await_workers(self, router: HttpService, n: int, timeout_s: float = 15) -> None:
        await asyncio.to_thread(self.wait_workers, router, n, timeout_s)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop(timeout_s=15)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    redis = RedisServer.create(tmp_path)
    redis.start()
    fleet = Fleet(tmp_path, redis)
    try:
        yield fleet
    finally:
        fleet.stop_all()
        redis.stop()


def rss_kb(pid: int) -> int:
    """Resident set size in kB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
