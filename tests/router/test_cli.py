"""The CLI contract: flags over environment over defaults, bad values exit 2."""

from __future__ import annotations

import pytest

from router.cli import parse_config
from router.config import RouterConfig


def test_defaults() -> None:
    config = parse_config(["--redis-url", "redis://r:6379/0"], {})
    assert config == RouterConfig(redis_url="redis://r:6379/0")
    assert (config.host, config.port, config.max_body_bytes) == ("127.0.0.1", 8080, 4 * 1024**2)
    assert (config.worker_stale_s, config.registry_refresh_s, config.max_attempts) == (2.5, 1.0, 3)


def test_environment_and_flags() -> None:
    env = {
        "REDIS_URL": "redis://env:1",
        "ROUTER_PORT": "9000",
        "ROUTER_WORKER_STALE_S": "4",
        "ROUTER_LOG_LEVEL": "debug",
    }
    config = parse_config(["--port", "9100", "--max-attempts", "5"], env)
    assert config.redis_url == "redis://env:1"
    assert (config.port, config.worker_stale_s, config.max_attempts) == (9100, 4.0, 5)
    assert config.log_level == "DEBUG"
    env["ROUTER_REDIS_URL"] = "redis://router-env:1"
    assert parse_config([], env).redis_url == "redis://router-env:1"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "--redis-url is required"),
        (["--redis-url", "redis://r", "--port", "http"], {}, "--port: invalid value 'http'"),
        (
            ["--redis-url", "redis://r"],
            {"ROUTER_READ_TIMEOUT_S": "0"},
            "ROUTER_READ_TIMEOUT_S must",
        ),
        (["--redis-url", "http://r"], {}, "--redis-url must start with redis://"),
        (["--redis-url", "redis://r", "--max-attempts", "0"], {}, "--max-attempts must be >= 1"),
        (["--redis-url", "redis://r", "--log-level", "loud"], {}, "--log-level must be one of"),
    ],
)
def test_invalid_values_exit_2(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv, env)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_overload_and_fault_options() -> None:
    config = parse_config(["--redis-url", "redis://r"], {})
    assert (config.policy, config.queue_max, config.queue_timeout_s) == ("least-loaded", 256, 30.0)
    assert (config.first_token_timeout_s, config.body_timeout_s) == (300.0, 30.0)
    assert (config.breaker_failures, config.breaker_open_s) == (2, 1.0)
    env = {"ROUTER_POLICY": "Round-Robin", "ROUTER_QUEUE_MAX": "0"}
    argv = ["--redis-url", "redis://r", "--first-token-timeout-s", "5", "--breaker-open-s", "0.5"]
    config = parse_config(argv, env)
    assert (config.policy, config.queue_max) == ("round-robin", 0)
    assert (config.first_token_timeout_s, config.breaker_open_s) == (5.0, 0.5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policy", "fastest"], "--policy must be one of least-loaded, round-robin, random"),
        (["--queue-max", "-1"], "--queue-max must be >= 0"),
        (["--queue-timeout-s", "0"], "--queue-timeout-s must be > 0"),
        (["--first-token-timeout-s", "nan"], "--first-token-timeout-s must be > 0"),
        (["--body-timeout-s", "-1"], "--body-timeout-s must be > 0"),
        (["--breaker-failures", "0"], "--breaker-failures must be >= 1"),
    ],
)
def test_invalid_overload_options_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--redis-url", "redis://r", *argv], {})
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
