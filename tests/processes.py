"""Real processes for tests: redis-server, workers and routers on free loopback ports.

The launcher is benchmarks.processes (shared with the benchmarks and deploy/local); this module
adds the tests' defaults: the real model for llama workers, a 2048-token context, one thread.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.processes import (
    MODEL_ID,
    MODEL_PATH,
    HttpService,
    Process,
    RedisServer,
    free_port,
    http_json,
    router_argv,
    wait_until,
    worker_argv,
)

__all__ = [
    "MODEL_ID",
    "MODEL_PATH",
    "HttpService",
    "Process",
    "RedisServer",
    "free_port",
    "http_json",
    "router_process",
    "wait_until",
    "worker_process",
]


def worker_process(
    tmp: Path, redis_url: str, worker_id: str, *, engine: str = "llama", extra: tuple[str, ...] = ()
) -> HttpService:
    port = free_port()
    options = ["--n-ctx", "2048", *extra]
    if engine != "fake":
        options += ["--model-path", MODEL_PATH, "--n-threads", "1"]
    args = worker_argv(
        port, redis_url, MODEL_ID, engine=engine, worker_id=worker_id, options=options
    )
    return HttpService(name=worker_id, args=args, log_path=tmp / f"{worker_id}.log", port=port)


def router_process(
    tmp: Path,
    redis_url: str,
    name: str = "router",
    extra: tuple[str, ...] = (),
    *,
    auth: bool = False,
) -> HttpService:
    port = free_port()
    args = router_argv(port, redis_url, auth=auth, options=extra)
    return HttpService(name=name, args=args, log_path=tmp / f"{name}.log", port=port)
