"""The shared launcher: command lines, probes, and processes stopped by PID with bounded waits."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from benchmarks.cpu import cpu_percent, cpu_seconds
from benchmarks.processes import (
    HOST,
    Process,
    ProcessExited,
    RedisServer,
    redis_argv,
    redis_ping,
    router_argv,
    wait_until,
    worker_argv,
)
from benchmarks.stack import StackConfig


def test_command_lines() -> None:
    assert redis_argv(7000) == [
        "redis-server", "--port", "7000", "--bind", HOST, "--save", "", "--appendonly", "no",
    ]  # fmt: skip
    assert redis_argv(7000, data_dir=Path("/d"))[-2:] == ["--dir", "/d"]
    worker = worker_argv(9001, "redis://r", "m", worker_id="w1", options=("--slots", "2"))
    assert worker[1:3] == ["-m", "worker"]
    assert worker[worker.index("--port") + 1] == "9001"
    assert worker[worker.index("--worker-id") + 1] == "w1"
    assert worker[-4:] == ["--engine", "fake", "--slots", "2"]  # options last: they win
    assert router_argv(8081, "redis://r")[-2:] == ["--auth", "off"]
    assert "--auth" not in router_argv(8081, "redis://r", auth=None, options=("--x",))
    assert router_argv(8081, "redis://r", auth=True, options=("--x",))[-3:] == [
        "--auth",
        "on",
        "--x",
    ]


def test_stack_worker_options() -> None:
    config = StackConfig(workers=2, fake_tokens_per_s=50.5, slots=4, per_worker_args=((), ("--a",)))
    assert config.worker_options(0) == [
        "--fake-ttft-ms", "0", "--fake-tokens-per-s", "50.5", "--slots", "4",
    ]  # fmt: skip
    assert config.worker_options(1)[-1] == "--a"
    with pytest.raises(ValueError, match="model_path"):
        StackConfig(engine="llama")


def test_wait_until_is_bounded() -> None:
    with pytest.raises(TimeoutError, match="never"):
        wait_until(lambda: False, 0.1, "never")
    calls: list[int] = []

    def flaky() -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("not yet")
        return True

    wait_until(flaky, 1.0, "flaky")  # OSError counts as "not yet"
    assert len(calls) == 2


def test_process_exit_is_seen_at_once(tmp_path: Path) -> None:
    proc = Process("quits", [sys.executable, "-c", "print('bye')"], tmp_path / "quits.log")
    proc.start()
    with pytest.raises(ProcessExited, match="bye"):
        proc.wait_ready(lambda: False, 30.0, "never")
    assert proc.stop() == 0


def test_stop_ends_the_process_by_pid(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    proc = Process("stubborn", [sys.executable, "-c", code], tmp_path / "s.log")
    proc.start()
    proc.wait_ready(lambda: "ready" in proc.log(), 10.0, "its SIGTERM handler")
    assert cpu_seconds(proc.pid) >= 0
    assert proc.stop(timeout_s=0.5) == -9  # ignored SIGTERM: killed after the bound
    assert not proc.alive()


def test_cpu_percent() -> None:
    before = {"router": 1.0, "machine": 10.0}
    after = {"router": 1.5, "machine": 11.5}
    assert cpu_percent(before, after, 1.0) == {"router": 50.0, "machine": 150.0, "other": 100.0}


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_server(tmp_path: Path) -> None:
    server = RedisServer.create(tmp_path)
    server.start()
    try:
        assert redis_ping(server.port)
        server.flush()
        assert server.url == f"redis://{HOST}:{server.port}/0"
    finally:
        assert server.stop() == 0
    with pytest.raises(OSError):
        redis_ping(server.port)
