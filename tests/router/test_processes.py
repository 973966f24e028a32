"""`--processes N` (router.processes): real routers on one port, each counted on its own
metrics port; SIGTERM stops them all; a child that dies takes the router down, non-zero."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.processes import http_status, router_sees
from benchmarks.scenario import prometheus_total
from benchmarks.streams import children_of
from router.config import RouterConfig
from router.processes import child_config
from tests.processes import MODEL_ID, HttpService, RedisServer, router_process, worker_process

pytestmark = pytest.mark.timeout(90)
REQUESTS = 40


def chat(url: str) -> int:
    """One request on a connection of its own (urllib never reuses one)."""
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()
        status: int = resp.status
        return status


def requests_counted(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return prometheus_total(resp.read().decode(), "router_requests_total")


@pytest.fixture
def worker(tmp_path: Path, redis_server: RedisServer) -> Iterator[HttpService]:
    proc = worker_process(tmp_path, redis_server.url, "w1", engine="fake")
    proc.start()
    try:
        proc.wait_healthy(30)
        yield proc
    finally:
        proc.stop()


def free_port_pair() -> int:
    """A port P with P and P + 1 free, below the kernel's ephemeral range (32768 and up) so that
    neither another free_port() nor a client's connection takes P + 1 in the meantime."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 32000)
        with contextlib.ExitStack() as stack:
            try:
                for port in (base, base + 1):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError("no two free ports in a row")


def start_router(tmp_path: Path, redis_url: str, metrics_port: int) -> HttpService:
    extra = ("--processes", "2", "--metrics-port", str(metrics_port))
    router = router_process(tmp_path, redis_url, extra=extra)
    router.start()
    for port in (router.port, metrics_port, metrics_port + 1):
        url = f"http://127.0.0.1:{port}"
        router.wait_ready(functools.partial(router_sees, url, 1), 30, f"{url} sees the worker")
    return router


def test_two_processes_share_the_port_and_each_serves_requests(
    tmp_path: Path, redis_server: RedisServer, worker: HttpService
) -> None:
    metrics_port = free_port_pair()
    router = start_router(tmp_path, redis_server.url, metrics_port)
    try:
        assert len(children_of(router.pid)) == 2
        statuses = [chat(router.url) for _ in range(REQUESTS)]
        assert statuses == [200] * REQUESTS
        counts = [requests_counted(metrics_port + i) for i in range(2)]
        # Each process counts only what it served; the kernel spread the connections.
        assert sum(counts) == REQUESTS
        assert min(counts) > 0, counts
    finally:
        code = router.stop(15)
    assert code == 0, router.log_tail()


def test_sigterm_stops_every_process(
    tmp_path: Path, redis_server: RedisServer, worker: HttpService
) -> None:
    router = start_router(tmp_path, redis_server.url, free_port_pair())
    children = children_of(router.pid)
    assert len(children) == 2
    router.signal(signal.SIGTERM)
    assert router.proc is not None
    assert router.proc.wait(20) == 0, router.log_tail()
    assert children & children_of(1) == set()  # none orphaned
    assert all(not os.path.exists(f"/proc/{pid}") for pid in children)
    with pytest.raises(OSError):
        http_status(router.url + "/health", 1.0)


def test_a_child_that_dies_stops_the_router_non_zero(
    tmp_path: Path, redis_server: RedisServer, worker: HttpService
) -> None:
    router = start_router(tmp_path, redis_server.url, free_port_pair())
    first, second = sorted(children_of(router.pid))
    os.kill(first, signal.SIGKILL)
    assert router.proc is not None
    assert router.proc.wait(20) == 1, router.log_tail()
    assert not os.path.exists(f"/proc/{second}")
    assert "exited with -9; stopping the others" in router.log()


def test_child_configs_split_metrics_ports_and_keep_admin_in_process_0() -> None:
    config = RouterConfig(
        redis_url="redis://127.0.0.1:1", port=8080, metrics_port=9100, admin_port=9000, processes=3
    )
    children = [child_config(config, i) for i in range(3)]
    assert [c.metrics_port for c in children] == [9100, 9101, 9102]
    assert [c.admin_port for c in children] == [9000, None, None]
    assert {c.processes for c in children} == {1}
    assert {c.port for c in children} == {8080}
