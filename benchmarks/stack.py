"""Start and stop a local stack for benchmarks: redis-server, workers, one or more routers.

Everything listens on 127.0.0.1 on free ports, logs to files in one folder, and is stopped by PID
(SIGTERM, then SIGKILL after a bound) when the `Stack` context exits, whatever happened. Every
wait polls with a deadline and fails early, with the log tail, if the process has exited.

    async with Stack(StackConfig(workers=2)) as stack:
        stack.router_url, stack.worker_urls, stack.redis_url

Workers run the fake engine unless `engine` says otherwise (`llama` with a `model_path`);
`per_worker_args` gives worker i extra CLI arguments (e.g. a slower fake token rate), appended
last so they win. `routers` replicas share the one Redis.

Readiness: redis answers PING; each worker's record is in the registry (contract.registry); every
router's GET /v1/models lists the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from redis.asyncio import Redis

from contract.registry import WorkerState, read_snapshot

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
POLL_S = 0.05


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


@dataclass(slots=True)
class Proc:
    name: str
    process: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, self.log_path.stat().st_size - max_bytes))
                return f.read().decode(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"


def free_port() -> int:
    """A port that was free a moment ago (the kernel's pick for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (all its threads), from procfs."""
    with open(f"/proc/{pid}/stat", "rb") as f:  # procfs: never blocks on I/O
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def host_busy_seconds() -> float:
    """CPU seconds all processes on the machine have run, plus hypervisor steal (/proc/stat).

    Interrupt and softirq time are left out: loopback traffic of the benchmark itself lands
    there, and no process is charged for it."""
    with open("/proc/stat", "rb") as f:  # procfs: never blocks on I/O
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
            int(x) for x in f.readline().split()[1:9]
        )
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def cpu_percent(
    before: Mapping[str, float], after: Mapping[str, float], wall_s: float
) -> dict[str, float]:
    """Percent of one core over `wall_s` for each CPU-seconds counter, from two snapshots whose
    `machine` key is `host_busy_seconds()`; `other` is what processes outside the benchmark used
    (other people's jobs on a shared machine), the noise to watch."""
    pct = {k: (after[k] - before[k]) / wall_s * 100 for k in before}
    ours = sum(v for k, v in pct.items() if k != "machine")
    pct["other"] = max(0.0, pct["machine"] - ours)
    return pct


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Pin every thread of a process to `cpus` (threads started later inherit it)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cpus)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


@dataclass(slots=True)
class Stack:
    """redis-server + `config.workers` workers + `config.routers` routers; an async context
    manager."""

    config: StackConfig
    redis: Proc | None = None
    routers: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
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
    def router(self) -> Proc | None:
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
    def procs(self) -> list[Proc]:
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
        args = [
            self.config.redis_server,
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
        ]  # fmt: skip
        self.redis = await self._spawn("redis", args, port)
        await self._wait(self.redis, "PING", functools.partial(_redis_ping, port))

    async def add_workers(self, count: int) -> list[Proc]:
        """Start `count` more workers and wait until all the stack's workers are registered."""
        started: list[Proc] = []
        for _ in range(count):
            port = free_port()
            index = len(self.workers)
            proc = await self._spawn(f"worker{index}", self._worker_args(index, port), port)
            self.workers.append(proc)
            started.append(proc)
        for proc in started:
            await self._wait(proc, "registration", functools.partial(self._registered, proc))
        for router in self.routers if started else []:
            await self._wait(
                router, "all workers", functools.partial(self._router_sees_workers, router)
            )
        return started

    def _worker_args(self, index: int, port: int) -> list[str]:
        c = self.config
        args = [
            c.python, "-m", "worker",
            "--model-id", c.model_id,
            "--redis-url", self.redis_url,
            "--host", HOST,
            "--port", str(port),
            "--engine", c.engine,
        ]  # fmt: skip
        if c.engine == "fake":
            args += ["--fake-ttft-ms", _num(c.fake_ttft_ms)]
            args += ["--fake-tokens-per-s", _num(c.fake_tokens_per_s)]
        if c.model_path is not None:
            args += ["--model-path", c.model_path]
        if c.n_threads is not None:
            args += ["--n-threads", str(c.n_threads)]
        if c.slots is not None:
            args += ["--slots", str(c.slots)]
        if c.max_queue is not None:
            args += ["--max-queue", str(c.max_queue)]
        args += c.worker_args
        if index < len(c.per_worker_args):
            args += c.per_worker_args[index]
        return args

    async def start_router(self) -> Proc:
        """Start one more router replica and wait until it lists the model."""
        port = free_port()
        args = [
            self.config.python, "-m", "router",
            "--redis-url", self.redis_url,
            "--host", HOST,
            "--port", str(port),
            "--auth", "off",  # benchmarks measure routing, not key checks
            *self.config.router_args,
        ]  # fmt: skip
        name = "router" if not self.routers else f"router{len(self.routers)}"
        router = await self._spawn(name, args, port)
        self.routers.append(router)
        await self._wait(router, "/v1/models", functools.partial(self._router_lists_model, port))
        return router

    async def stop(self, keep_logs: bool = False) -> None:
        """Terminate by PID: router, then workers, then redis. Safe to call more than once.

        Our temporary log folder is removed unless `keep_logs` or a process refused to die."""
        procs = [
            p
            for p in (*reversed(self.routers), *reversed(self.workers), self.redis)
            if p is not None
        ]
        for proc in procs:
            await _terminate(proc, self.config.stop_timeout_s)
        if not self._own_log_dir:
            return
        if keep_logs or any(p.process.returncode is None for p in procs):
            logger.warning("stack logs kept in %s", self.log_dir)
        else:
            await asyncio.to_thread(shutil.rmtree, self.log_dir, True)

    async def _spawn(self, name: str, args: list[str], port: int) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        log = await asyncio.to_thread(log_path.open, "wb")
        try:
            process = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=_child_env(),
                start_new_session=True,  # a Ctrl-C to us does not hit it; we stop it by PID
            )
        finally:
            log.close()  # the child holds its own descriptor
        logger.info("started %s pid=%d port=%d", name, process.pid, port)
        return Proc(name=name, process=process, port=port, log_path=log_path)

    async def _wait(self, proc: Proc, what: str, ready: Callable[[], Awaitable[bool]]) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        last_error = "not ready"
        while True:
            if proc.process.returncode is not None:
                raise StackError(
                    f"{proc.name} exited with {proc.process.returncode} before {what}:\n"
                    f"{proc.log_tail()}"
                )
            try:
                if await ready():
                    return
                last_error = "answered, but not ready yet"
            except (OSError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last_error = repr(exc)
            if time.monotonic() >= deadline:
                raise StackError(
                    f"{proc.name} not ready ({what}) after {self.config.start_timeout_s} s: "
                    f"{last_error}\n{proc.log_tail()}"
                )
            await asyncio.sleep(POLL_S)

    async def _registered(self, proc: Proc) -> bool:
        async with Redis.from_url(self.redis_url, socket_timeout=2.0) as redis:
            snapshot = await read_snapshot(redis)
        return any(
            r.url.rstrip("/").endswith(f":{proc.port}")
            and r.model == self.config.model_id
            and r.state == WorkerState.READY
            for r in snapshot.workers.values()
        )

    async def _router_sees_workers(self, router: Proc) -> bool:
        """The router's /health `workers` count matches ours; when it has no such field, give
        its registry watcher a moment to take in the join events."""
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{router.url}/health") as resp,
        ):
            data = orjson.loads(await resp.read()) if resp.status == 200 else None
        count = data.get("workers") if isinstance(data, dict) else None
        if isinstance(count, int):
            return count == len(self.workers)
        await asyncio.sleep(1.0)
        return True

    async def _router_lists_model(self, port: int) -> bool:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"http://{HOST}:{port}/v1/models") as resp,
        ):
            if resp.status != 200:
                return False
            data = orjson.loads(await resp.read())
        if not self.workers:  # nothing can be listed yet
            return True
        return any(m.get("id") == self.config.model_id for m in data.get("data", []))


async def _redis_ping(port: int) -> bool:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2.0)
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 2.0)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return line.startswith(b"+PONG")


async def _terminate(proc: Proc, timeout_s: float) -> None:
    if proc.process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.process.wait(), timeout_s)
    except TimeoutError:
        logger.warning(
            "%s pid=%d ignored SIGTERM for %s s; killing", proc.name, proc.pid, timeout_s
        )
        with contextlib.suppress(ProcessLookupError):
            proc.process.kill()
        await asyncio.wait_for(proc.process.wait(), timeout_s)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
