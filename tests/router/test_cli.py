"""`python -m router`: its --help, and the Redis URL as the logs show it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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


def test_an_unreadable_secret_file_exits_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfe not text")
    argv = ["--redis-url", "redis://127.0.0.1:1", "--worker-secret-file", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "the worker secret file is not UTF-8 text" in err
    assert "Traceback" not in err


def test_a_flag_prefix_is_not_taken_for_the_secret_file_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--redis-url", "redis://127.0.0.1:1", "--worker-secret", "s3cret-value"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --worker-secret" in err
    assert "s3cret-value" not in err


def test_a_redis_url_that_does_not_parse_is_never_echoed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--redis-url", "redis://u:s3cret\uff03pw@127.0.0.1:6379/0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err
    assert "redis_url" in err or "redis-url" in err
