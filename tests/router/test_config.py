"""The tenancy flags: --auth (default on), --base-domain, --key-cache-ttl-s; bad values exit 2."""

from __future__ import annotations

import pytest

from router.cli import parse_config

URL = ["--redis-url", "redis://r:6379/0"]


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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--auth", "maybe"], "--auth: invalid value 'maybe'"),
        (["--key-cache-ttl-s", "6"], "--key-cache-ttl-s must be between 0 and 5"),
        (["--base-domain", "."], "--base-domain must not be empty"),
    ],
)
def test_invalid_values_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_config([*URL, *argv], {})
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
