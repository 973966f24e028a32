"""--backlog reaches the router's listening socket (`ss` shows a listener's backlog as Send-Q),
and the config rejects what cannot work with clear messages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.processes import http_status
from router.config import parse_config
from tests.processes import RedisServer, router_process

pytestmark = pytest.mark.timeout(60)
needs_ss = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on 127.0.0.1:`port`, as the kernel holds it."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    assert out[0] == "LISTEN", out
    return int(out[2])  # State Recv-Q Send-Q ...


@needs_ss
@pytest.mark.parametrize(("extra", "expected"), [((), None), (("--backlog", "37"), 37)])
def test_the_backlog_reaches_the_listening_socket(
    tmp_path: Path, redis_server: RedisServer, extra: tuple[str, ...], expected: int | None
) -> None:
    router = router_process(tmp_path, redis_server.url, extra=extra)
    router.start()
    try:
        router.wait_ready(lambda: http_status(router.url + "/health") == 200, 30, "/health")
        # The default, 4096, as far as the kernel allows; aiohttp's own would be 128.
        assert listen_backlog(router.port) == (expected or min(4096, somaxconn()))
    finally:
        router.stop()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--processes", "0"], "--processes must be >= 1, got 0"),
        (["--backlog", "0"], "--backlog must be >= 1, got 0"),
        (["--processes", "2", "--port", "0"], "--processes > 1 needs a fixed port"),
        (
            ["--processes", "2", "--port", "9001", "--metrics-port", "9000"],
            "--processes: metrics ports 9000..9001 (one a process) must be <= 65535 and differ",
        ),
        (["--processes", "2", "--metrics-port", "65535"], "metrics ports 65535..65536"),
    ],
)
def test_processes_and_backlog_are_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--redis-url", "redis://127.0.0.1:1", *argv], {})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_processes_and_backlog_read_the_environment() -> None:
    config = parse_config(
        ["--redis-url", "redis://127.0.0.1:1"], {"ROUTER_PROCESSES": "3", "ROUTER_BACKLOG": "512"}
    )
    assert (config.processes, config.backlog) == (3, 512)
