"""The proxies compared side by side, all in front of one mock upstream, as one async context.

Started once and left running for every round (an idle one costs next to nothing): the mock
upstream (benchmarks.router_overhead.mock_upstream), and in front of it nginx (a generated
minimal reverse-proxy config), the floor relay (benchmarks.router_overhead.floor_relay),
vllm-router from PyPI (installed on first use into a venv of its own under ~/.cache/xero, never
a project dependency), and this router twice, `--auth off` and `--auth on` with a rate-limited
key, over one redis-server, the mock registered by worker.agent (`--kind openai`).

Pinning: each proxy starts under `taskset` on the proxy CPU (its threads inherit it); the mock,
redis, the agent, wrk and the driver run on the other CPU. A contestant whose program is
missing (nginx, or vllm-router when it cannot be installed) is left out with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.nginx import config_text
from benchmarks.processes import (
    HOST,
    HttpService,
    Process,
    RedisServer,
    free_port,
    http_status,
    router_argv,
    router_sees,
)
from benchmarks.router_overhead.mock_upstream import MODEL_ID

logger = logging.getLogger(__name__)

VLLM_ROUTER_VERSION = "0.1.17"
VLLM_ROUTER_VENV = Path.home() / ".cache" / "xero" / f"vllm-router-{VLLM_ROUTER_VERSION}"
KEY_RPM, KEY_TPM = 1_000_000_000, 1_000_000_000_000  # limits in the path, never refusing
NAMES = ("direct", "nginx", "vllm-router", "floor-relay", "router", "router-auth")


@dataclass(frozen=True, slots=True)
class Contestant:
    """One path to the mock: its base URL, the process to charge CPU and RSS to (None: the
    client talks to the mock directly) and the headers a request needs."""

    name: str
    label: str
    url: str
    pid: int | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Field:
    """The mock, the proxies in front of it and what they need; `async with` starts and stops
    them all (by PID)."""

    proxy_cpus: frozenset[int] | None
    other_cpus: frozenset[int] | None
    chunks: int
    chunk_gap_ms: float
    wanted: Sequence[str] = NAMES
    contestants: list[Contestant] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    procs: list[Process] = field(default_factory=list)
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bench-compare-")))

    async def __aenter__(self) -> Field:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        for proc in reversed(self.procs):
            await asyncio.to_thread(proc.stop, 5.0)
        await asyncio.to_thread(shutil.rmtree, self.tmp, True)

    def _pin(self, argv: list[str], cpus: frozenset[int] | None) -> list[str]:
        if cpus is None or shutil.which("taskset") is None:
            return argv
        return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus)), *argv]

    async def _spawn(
        self, name: str, argv: list[str], proxy: bool, env: dict[str, str] | None = None
    ) -> HttpService:
        port = free_port()
        argv = [a.replace("{port}", str(port)) for a in argv]
        cpus = self.proxy_cpus if proxy else self.other_cpus
        proc = HttpService(name, self._pin(argv, cpus), self.tmp / f"{name}.log", port,
                           env=env or {})  # fmt: skip
        self.procs.append(proc)
        await asyncio.to_thread(proc.start)
        logger.info("started %s pid=%d port=%d", name, proc.pid, port)
        return proc

    async def _wait(self, proc: Process, what: str, check: Any) -> None:
        await asyncio.to_thread(proc.wait_ready, check, 60.0, what)

    async def _start(self) -> None:
        py = sys.executable
        mock = await self._spawn("mock", [py, "-m", "benchmarks.router_overhead.mock_upstream",
            "--port", "{port}", "--chunks", str(self.chunks),
            "--chunk-gap-ms", f"{self.chunk_gap_ms:g}"], proxy=False)  # fmt: skip
        await self._wait(mock, "/health", lambda: http_status(mock.url + "/health") == 200)
        upstream = mock.url
        for name in self.wanted:
            reason = await self._start_one(name, upstream)
            if reason is not None:
                self.skipped[name] = reason
                logger.warning("left out %s: %s", name, reason)

    async def _start_one(self, name: str, upstream: str) -> str | None:
        if name == "direct":
            self.contestants.append(Contestant(name, "direct (no proxy)", upstream))
        elif name == "nginx":
            return await self._start_nginx(upstream)
        elif name == "floor-relay":
            relay = await self._spawn(name, [sys.executable, "-m",
                "benchmarks.router_overhead.floor_relay", "--port", "{port}",
                "--upstream", upstream], proxy=True)  # fmt: skip
            await self._ready(relay)
            label = "minimal aiohttp relay (a floor, not a product)"
            self.contestants.append(Contestant(name, label, relay.url, relay.pid))
        elif name == "vllm-router":
            return await self._start_vllm_router(upstream)
        elif name in ("router", "router-auth"):
            await self._start_router(name, upstream)
        else:
            return f"unknown contestant (known: {', '.join(NAMES)})"
        return None

    async def _ready(self, proc: HttpService) -> None:
        """Ready when a chat request through it answers 200."""
        await self._wait(proc, "a chat answer", lambda: post_status(proc.url) == 200)

    async def _start_nginx(self, upstream: str) -> str | None:
        nginx = shutil.which(
            "nginx", path=os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin"))
        )
        if nginx is None:
            return "nginx is not installed"
        port = free_port()
        conf = self.tmp / "nginx.conf"
        text = config_text(self.tmp, port, [upstream])
        await asyncio.to_thread(conf.write_text, text)
        argv = [nginx, "-p", str(self.tmp), "-c", str(conf), "-e", str(self.tmp / "nginx.err")]
        proc = HttpService("nginx", self._pin(argv, self.proxy_cpus), self.tmp / "nginx.log", port)
        self.procs.append(proc)
        await asyncio.to_thread(proc.start)
        await self._ready(proc)
        self.contestants.append(Contestant("nginx", nginx_version(nginx), proc.url, proc.pid))
        return None

    async def _start_vllm_router(self, upstream: str) -> str | None:
        binary = await asyncio.to_thread(ensure_vllm_router)
        if binary is None:
            return f"vllm-router=={VLLM_ROUTER_VERSION} could not be installed"
        argv = [str(binary), "--host", HOST, "--port", "{port}", "--worker-urls", upstream,
                "--policy", "round_robin", "--prometheus-host", HOST,
                "--prometheus-port", str(free_port()), "--log-level", "warning"]  # fmt: skip
        proc = await self._spawn("vllm-router", argv, proxy=True)
        await self._ready(proc)
        label = f"vllm-router {VLLM_ROUTER_VERSION} (Rust)"
        self.contestants.append(Contestant("vllm-router", label, proc.url, proc.pid))
        return None

    async def _start_router(self, name: str, upstream: str) -> None:
        redis = await self._registry(upstream)
        auth = name == "router-auth"
        argv = router_argv(0, redis.url, auth=auth, options=("--log-level", "WARNING"))
        argv[argv.index("--port") + 1] = "{port}"
        proc = await self._spawn(name, argv, proxy=True)
        await self._wait(proc, "the mock registered", lambda: router_sees(proc.url, 1))
        headers: tuple[tuple[str, str], ...] = ()
        if auth:
            key = await make_key(redis.url)
            headers = (("Authorization", f"Bearer {key}"),)
        await self._wait(proc, "a chat answer", lambda: post_status(proc.url, headers) == 200)
        label = (
            "this router, auth on (key with RPM/TPM limits)" if auth else "this router, auth off"
        )
        self.contestants.append(Contestant(name, label, proc.url, proc.pid, headers))

    async def _registry(self, upstream: str) -> RedisServer:
        """redis-server with the mock registered in it, started on first use."""
        found = next((p for p in self.procs if isinstance(p, RedisServer)), None)
        if found is not None:
            return found
        redis = RedisServer.create(self.tmp)
        redis.args = self._pin(redis.args, self.other_cpus)
        self.procs.append(redis)
        await asyncio.to_thread(redis.start)
        agent = await self._spawn("agent", [sys.executable, "-m", "worker.agent",
            "--upstream", upstream, "--model-id", MODEL_ID, "--redis-url", redis.url,
            "--kind", "openai", "--slots", "4096", "--log-level", "WARNING"],
            proxy=False)  # fmt: skip
        del agent  # lives until stop(); routers wait for its record
        return redis


def post_status(base_url: str, headers: Sequence[tuple[str, str]] = ()) -> int:
    """POST one small chat request; the status (raises OSError if unreachable)."""
    body = b'{"model":"%s","messages":[{"role":"user","content":"hi"}]}' % MODEL_ID.encode()
    request = urllib.request.Request(base_url + "/v1/chat/completions", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    for k, v in headers:
        request.add_header(k, v)
    try:
        with urllib.request.urlopen(request, timeout=2.0) as resp:
            resp.read()
            status: int = resp.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code


async def make_key(redis_url: str) -> str:
    """A project serving the mock's model and a key of it with RPM and TPM limits far above
    what a run sends."""
    from redis.asyncio import Redis

    from router import tenant_admin

    redis: Redis[Any] = Redis.from_url(redis_url)
    try:
        project = await tenant_admin.create_project(redis, "bench")
        await tenant_admin.create_endpoint(redis, project.project_id, "chat", [MODEL_ID])
        new = await tenant_admin.create_key(
            redis, project.project_id, name="bench", rpm=KEY_RPM, tpm=KEY_TPM
        )
        return new.key
    finally:
        await redis.aclose()  # type: ignore[attr-defined]


def ensure_vllm_router() -> Path | None:
    """The vllm-router executable, installed with pip into its own venv on first use."""
    binary = VLLM_ROUTER_VENV / "bin" / "vllm-router"
    if binary.exists():
        return binary
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VLLM_ROUTER_VENV)], check=True,
                       capture_output=True, timeout=300)  # fmt: skip
        pip = [str(VLLM_ROUTER_VENV / "bin" / "pip"), "install", "-q",
               f"vllm-router=={VLLM_ROUTER_VERSION}"]  # fmt: skip
        subprocess.run(pip, check=True, capture_output=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("installing vllm-router failed: %s", exc)
        return None
    return binary if binary.exists() else None


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    text = (out.stderr or out.stdout).strip()  # "nginx version: nginx/1.22.1"
    return "nginx " + text.rsplit("/", 1)[-1] if "/" in text else "nginx"


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a launcher's children are charged to it)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:  # procfs: never blocks on I/O
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its descendants (VmRSS), in bytes."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status", "rb") as f:  # procfs: never blocks on I/O
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total
