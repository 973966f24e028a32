"""The router's configuration: flags over environment over defaults, bad values exit 2."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from contract.options import LogLevel
from router.balancer import PolicyName
from router.config import RouterConfig, parse_config

URL = ["--redis-url", "redis://r:6379/0"]


def test_defaults() -> None:
    config = parse_config(URL, {})
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
    assert config.log_level is LogLevel.DEBUG
    env["ROUTER_REDIS_URL"] = "redis://router-env:1"
    assert parse_config([], env).redis_url == "redis://router-env:1"
    assert parse_config(["--redis-url", "redis://flag:1"], env).redis_url == "redis://flag:1"


def test_auth_is_on_unless_turned_off() -> None:
    config = parse_config(URL, {})
    assert (config.auth, config.base_domain, config.key_cache_ttl_s) == (True, None, 2.0)
    assert parse_config([*URL, "--auth", "off"], {}).auth is False
    assert parse_config(URL, {"ROUTER_AUTH": "OFF"}).auth is False
    assert parse_config([*URL, "--auth", "on"], {"ROUTER_AUTH": "off"}).auth is True


def test_base_domain_and_key_cache() -> None:
    env = {"ROUTER_BASE_DOMAIN": ".API.Example.com.", "ROUTER_KEY_CACHE_TTL_S": "5"}
    config = parse_config(URL, env)
    assert (config.base_domain, config.key_cache_ttl_s) == ("api.example.com", 5.0)


def test_overload_and_fault_options() -> None:
    config = parse_config(URL, {})
    assert (config.policy, config.queue_max, config.queue_timeout_s) == ("least-loaded", 256, 30.0)
    assert (config.first_token_timeout_s, config.body_timeout_s) == (300.0, 30.0)
    assert (config.breaker_failures, config.breaker_open_s) == (2, 1.0)
    env = {"ROUTER_POLICY": "Round-Robin", "ROUTER_QUEUE_MAX": "0"}
    argv = [*URL, "--first-token-timeout-s", "5", "--breaker-open-s", "0.5"]
    config = parse_config(argv, env)
    assert (config.policy, config.queue_max) == (PolicyName.ROUND_ROBIN, 0)
    assert (config.first_token_timeout_s, config.breaker_open_s) == (5.0, 0.5)


def test_enums_are_coerced_and_checked_on_direct_construction() -> None:
    loose: dict[str, Any] = {"policy": "random", "log_level": "WARNING"}
    config = RouterConfig(redis_url="redis://r", **loose)
    assert (config.policy, config.log_level) == (PolicyName.RANDOM, LogLevel.WARNING)
    with pytest.raises(ValueError, match=r"^policy must be one of"):
        dataclasses.replace(config, **{**loose, "policy": "fastest"})


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "--redis-url (ROUTER_REDIS_URL or REDIS_URL) is required"),
        ([*URL, "--port", "http"], {}, "--port: invalid value 'http'"),
        (URL, {"ROUTER_READ_TIMEOUT_S": "0"}, "ROUTER_READ_TIMEOUT_S must be > 0"),
        (["--redis-url", "http://r"], {}, "--redis-url must start with redis://"),
        ([*URL, "--max-attempts", "0"], {}, "--max-attempts must be >= 1"),
        ([*URL, "--log-level", "loud"], {}, "--log-level must be one of"),
        ([*URL, "--auth", "maybe"], {}, "--auth: invalid value 'maybe'"),
        ([*URL, "--key-cache-ttl-s", "6"], {}, "--key-cache-ttl-s must be between 0 and 5"),
        ([*URL, "--base-domain", "."], {}, "--base-domain must not be empty"),
        (
            [*URL, "--policy", "fastest"],
            {},
            "--policy must be one of least-loaded, round-robin, random",
        ),
        ([*URL, "--queue-max", "-1"], {}, "--queue-max must be >= 0"),
        ([*URL, "--queue-timeout-s", "0"], {}, "--queue-timeout-s must be > 0"),
        ([*URL, "--first-token-timeout-s", "nan"], {}, "--first-token-timeout-s: invalid value"),
        ([*URL, "--body-timeout-s", "-1"], {}, "--body-timeout-s must be > 0"),
        ([*URL, "--breaker-failures", "0"], {}, "--breaker-failures must be >= 1"),
    ],
)
def test_invalid_values_exit_2(
    argv: list[str], env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv, env)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
