"""--backlog reaches the worker's listening socket; a backlog below 1 is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.processes import RedisServer, worker_process
from tests.router.test_backlog import listen_backlog, needs_ss
from worker.config import ConfigError, load_config

pytestmark = pytest.mark.timeout(60)


@needs_ss
def test_the_backlog_reaches_the_listening_socket(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    worker = worker_process(
        tmp_path, redis_server.url, "w1", engine="fake", extra=("--backlog", "41")
    )
    worker.start()
    try:
        worker.wait_healthy(30)
        assert listen_backlog(worker.port) == 41
    finally:
        worker.stop()


def test_the_default_backlog_is_for_production_and_below_1_is_refused() -> None:
    base = ["--model-id", "m", "--redis-url", "redis://127.0.0.1:1", "--engine", "fake"]
    assert load_config(base, {}).backlog == 4096
    with pytest.raises(ConfigError, match="--backlog: expected >= 1"):
        load_config([*base, "--backlog", "0"], {})
