"""`python -m router`: its --help, and the Redis URL as the logs show it."""

from __future__ import annotations

import dataclasses

import pytest

from router.cli import _redacted, main
from router.config import RouterConfig


def test_help_lists_every_option_with_its_variable_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for item in dataclasses.fields(RouterConfig):
        assert "--" + item.name.replace("_", "-") in text
        assert "ROUTER_" + item.name.upper() in text
    assert "ROUTER_REDIS_URL or REDIS_URL; required" in text
    assert "ROUTER_PORT; default 8080" in text
    assert "ROUTER_MAX_BODY_BYTES; default 4194304" in text
    assert "ROUTER_AUTH; default on" in text
    assert "ROUTER_POLICY; default least-loaded" in text


def test_redis_url_is_redacted_for_logs() -> None:
    assert _redacted("redis://:secret@r:6379/0") == "redis://***@r:6379/0"
    assert _redacted("redis://r:6379/0") == "redis://r:6379/0"
