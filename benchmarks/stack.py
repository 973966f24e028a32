"""A local stack for benchmarks: redis-server, workers, one or more routers, as one context.

Everything listens on 127.0.0.1 on free ports, logs to files in one folder, and is stopped by PID
(SIGTERM, then SIGKILL after a bound) when the `Stack` context exits, whatever happened. The
processes, command lines and readiness probes are benchmarks.processes'.

    async with Stack(StackConfig(workers=2)) as stack:
        stack.router_url, stack.worker_urls, stack.redis_url

Workers run the fake engine unless `engine` says otherwise (`llama` with a `model_path`);
`per_worker_args` gives worker i extra CLI arguments (e.g. a slower fake token rate), appended
last so they win. `routers` replicas share the one Redis.

Readiness: redis answers PING; each worker answers /health (it listens only once registered);
every router's GET /v1/models lists the model, and its /health counts every worker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.processes import (
    HOST,
    HttpService,
    Process,
    ProcessExited,
    free_port,
    http_json,
    http_status,
    redis_argv,
    redis_ping,
    router_argv,
    router_sees,
    worker_argv,
)

logger = logging.getLogger(__name__)


class StackError(RuntimeError):
    """A process of the stack did not start, or exited, or did not become ready in time."""


@dataclass(frozen=True, slots=True)
class StackConfig:
    model_id: str = "bench-model"
    workers: int = 1
    routers: int = 1
    engine: str = "fake"  # fake | llama | batched (the worker's --engine)
    model_path: str | None = None  # the real engines' GGUF (or pkg:<package>/<file>)
    n_threads: int | None = None  # the real engines' CPU threads
    fake_ttft_ms: float = 0.0
    fake_tokens_per_s: float = 0.0  # 0: no delay between tokens
    slots: int | None = None  # None: the worker's default
    max_queue: int | None = None
    start_timeout_s: float = 30.0
    stop_timeout_s: float = 5.0
    log_dir: Path | None = None  # None: a fresh temporary folder
    redis_server: str = "redis-server"
    python: str = sys.executable
    worker_args: tuple[str, ...] = ()  # extra worker CLI arguments
    router_args: tuple[str, ...] = ()  # extra router CLI arguments
    per_worker_args: tuple[tuple[str, ...], ...] = ()  # worker i's own extra arguments

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.routers < 1:
            raise ValueError(f"routers must be >= 1, got {self.routers}")
        if self.engine != "fake" and self.model_path is None:
            raise ValueError(f"engine {self.engine!r} needs a model_path")
        if len(self.per_worker_args) > self.workers:
            raise ValueError("per_worker_args has more entries than workers")
        if self.start_timeout_s <= 0 or self.stop_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")

    def worker_options(self, index: int) -> list[str]:
        """Worker `index`'s flags after --engine: engine settings, then the extra arguments."""
        options: list[str] = []
        if self.engine == "fake":
            options += ["--fake-ttft-ms", _num(self.fake_ttft_ms)]
            options += ["--fake-tokens-per-s", _num(self.fake_tokens_per_s)]
        settings = (
            ("--model-path", self.model_path),
            ("--n-threads", self.n_threads),
            ("--slots", self.slots),
            ("--max-queue", self.max_queue),
        )
        for flag, value in settings:
            if value is not None:
                options += [flag, str(value)]
        options += self.worker_args
        if index < len(self.per_worker_args):
            options += self.per_worker_args[index]
        return options


@dataclass(slots=True)
class Stack:
    """redis-server + `config.workers` workers + `config.routers` routers; an async context
    manager."""

    config: StackConfig
    redis: Process | None = None
    routers: list[HttpService] = field(default_factory=list)
    workers: list[HttpService] = field(default_factory=list)
    log_dir: Path = field(init=False)
    _own_log_dir: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.config.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="bench-stack-"))
            self._own_log_dir = True
        else:
            self.log_dir = self.config.log_dir
            self.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def redis_url(self) -> str:
        if self.redis is None:
            raise StackError("redis is not running")
        return f"redis://{HOST}:{self.redis.port}/0"

    @property
    def router(self) -> HttpService | None:
        """The first router (the only one unless `config.routers` > 1)."""
        return self.routers[0] if self.routers else None

    @property
    def router_url(self) -> str:
        if self.router is None:
            raise StackError("the router is not running")
        return self.router.url

    @property
    def router_urls(self) -> list[str]:
        return [r.url for r in self.routers]

    @property
    def worker_urls(self) -> list[str]:
        return [w.url for w in self.workers]

    @property
    def procs(self) -> list[Process]:
        return [p for p in (self.redis, *self.workers, *self.routers) if p is not None]

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop(keep_logs=True)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        await self.stop(keep_logs=exc_type is not None)

    async def start(self) -> None:
        await self.start_redis()
        await self.add_workers(self.config.workers)
        for _ in range(self.config.routers):
            await self.start_router()

    async def start_redis(self) -> None:
        if shutil.which(self.config.redis_server) is None:
            raise StackError(f"{self.config.redis_server!r} is not on PATH")
        port = free_port()
        self.redis = Process("redis", redis_argv(port, server=self.config.redis_server),
                             self.log_dir / "redis.log", port)  # fmt: skip
        await self._start(self.redis, "PING", lambda: redis_ping(port))

    async def add_workers(self, count: int) -> list[HttpService]:
        """Start `count` more workers and wait until all the stack's workers are registered."""
        c = self.config
        started: list[HttpService] = []
        for _ in range(count):
            port, index = free_port(), len(self.workers)
            argv = worker_argv(port, self.redis_url, c.model_id, engine=c.engine,
                               options=c.worker_options(index), python=c.python)  # fmt: skip
            proc = HttpService(f"worker{index}", argv, self.log_dir / f"worker{index}.log", port)
            await asyncio.to_thread(proc.start)
            logger.info("started %s pid=%d port=%d", proc.name, proc.pid, port)
            self.workers.append(proc)
            started.append(proc)
        for proc in started:
            await self._wait(proc, "registration", _health_check(proc))
        n = len(self.workers)
        for router in self.routers if started else []:
            await self._wait(router, "all workers", functools.partial(router_sees, router.url, n))
        return started

    async def start_router(self) -> HttpService:
        """Start one more router replica and wait until it lists the model."""
        port = free_port()
        # auth off: benchmarks measure routing, not key checks
        argv = router_argv(port, self.redis_url, auth=False, options=self.config.router_args,
                           python=self.config.python)  # fmt: skip
        name = "router" if not self.routers else f"router{len(self.routers)}"
        router = HttpService(name, argv, self.log_dir / f"{name}.log", port)
        self.routers.append(router)
        await self._start(router, "/v1/models", lambda: self._lists_model(router))
        return router

    async def stop(self, keep_logs: bool = False) -> None:
        """Terminate by PID: routers, then workers, then redis. Safe to call more than once.

        Our temporary log folder is removed unless `keep_logs` or a process refused to die."""
        procs: list[Process] = [*reversed(self.routers), *reversed(self.workers)]
        procs += [self.redis] if self.redis is not None else []
        for proc in procs:
            if proc.alive():
                await asyncio.to_thread(proc.stop, self.config.stop_timeout_s)
        if not self._own_log_dir:
            return
        if keep_logs or any(p.alive() for p in procs):
            logger.warning("stack logs kept in %s", self.log_dir)
        else:
            await asyncio.to_thread(shutil.rmtree, self.log_dir, True)

    async def _start(self, proc: Process, what: str, ready: Callable[[], bool]) -> None:
        await asyncio.to_thread(proc.start)
        logger.info("started %s pid=%d port=%d", proc.name, proc.pid, proc.port)
        await self._wait(proc, what, ready)

    async def _wait(self, proc: Process, what: str, ready: Callable[[], bool]) -> None:
        timeout_s = self.config.start_timeout_s
        try:
            await asyncio.to_thread(proc.wait_ready, ready, timeout_s, what)
        except (ProcessExited, TimeoutError) as exc:
            raise StackError(str(exc)) from None

    def _lists_model(self, router: HttpService) -> bool:
        status, data = http_json(router.url + "/v1/models", 2.0)
        if status != 200:
            return False
        if not self.workers:  # nothing can be listed yet
            return True
        return any(m.get("id") == self.config.model_id for m in data.get("data", []))


def _health_check(proc: HttpService) -> Callable[[], bool]:
    return lambda: http_status(proc.url + "/health", 2.0) == 200


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
