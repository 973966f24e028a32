"""The worker's configuration: one frozen value, parsed once from flags and environment.

Every flag `--some-option` may instead come from `WORKER_SOME_OPTION` (flags win), except
`--redis-url`, which reads `REDIS_URL`. Invalid values raise `ConfigError` with a message that
names both spellings; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

EngineKind = Literal["llama", "fake", "batched"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
PKG_PREFIX = "pkg:"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    model_id: str
    redis_url: str
    model_path: str | None = None  # resolved filesystem path; None only for the fake engine
    engine: EngineKind = "llama"
    host: str = "127.0.0.1"
    port: int = 9001
    worker_id: str = ""  # "" -> derived from host/port plus a short random suffix
    advertise_url: str = ""  # "" -> http://HOST:PORT
    n_gpu_layers: int = 0  # -1: every layer
    n_ctx: int = 4096
    n_threads: int | None = None  # None: llama.cpp's default
    slots: int = 1
    max_queue: int = 64
    heartbeat_interval_s: float = 0.5
    heartbeat_ttl_s: float = 2.0
    drain_timeout_s: float = 30.0
    fake_ttft_ms: float = 20.0
    fake_tokens_per_s: float = 200.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        _check(bool(self.model_id), "--model-id (WORKER_MODEL_ID) is required")
        _check(bool(self.redis_url), "--redis-url (REDIS_URL) is required")
        _check(
            urlsplit(self.redis_url).scheme in ("redis", "rediss", "unix"),
            f"--redis-url (REDIS_URL): expected redis://, rediss:// or unix://, "
            f"got {self.redis_url!r}",
        )
        _check(
            self.engine in get_args(EngineKind),
            f"--engine (WORKER_ENGINE): expected one of llama, fake, batched, got {self.engine!r}",
        )
        _check(
            self.engine == "fake" or self.model_path is not None,
            f"--model-path (WORKER_MODEL_PATH) is required for the {self.engine} engine",
        )
        _check(1 <= self.port <= 65535, "--port (WORKER_PORT): expected 1..65535")
        _check(self.n_gpu_layers >= -1, "--n-gpu-layers (WORKER_N_GPU_LAYERS): expected >= -1")
        _check(self.n_ctx >= 16, "--n-ctx (WORKER_N_CTX): expected >= 16")
        _check(
            self.n_threads is None or self.n_threads >= 1,
            "--n-threads (WORKER_N_THREADS): expected >= 1",
        )
        _check(self.slots >= 1, "--slots (WORKER_SLOTS): expected >= 1")
        _check(self.max_queue >= 0, "--max-queue (WORKER_MAX_QUEUE): expected >= 0")
        _check(
            self.heartbeat_interval_s > 0,
            "--heartbeat-interval-s (WORKER_HEARTBEAT_INTERVAL_S): expected > 0",
        )
        _check(
            self.heartbeat_ttl_s > self.heartbeat_interval_s,
            "--heartbeat-ttl-s (WORKER_HEARTBEAT_TTL_S): must be longer than the heartbeat "
            "interval, or the record expires between heartbeats",
        )
        _check(
            self.drain_timeout_s >= 0, "--drain-timeout-s (WORKER_DRAIN_TIMEOUT_S): expected >= 0"
        )
        _check(self.fake_ttft_ms >= 0, "--fake-ttft-ms (WORKER_FAKE_TTFT_MS): expected >= 0")
        _check(
            self.log_level in LOG_LEVELS,
            f"--log-level (WORKER_LOG_LEVEL): expected one of {', '.join(LOG_LEVELS)}",
        )
        # Derived defaults; a frozen dataclass can only fill them in here.
        if not self.worker_id:
            host = socket.gethostname() if self.host in WILDCARD_HOSTS else self.host
            object.__setattr__(self, "worker_id", f"{host}-{self.port}-{secrets.token_hex(3)}")
        if not self.advertise_url:
            host = socket.gethostname() if self.host in WILDCARD_HOSTS else self.host
            if ":" in host:  # IPv6 literal
                host = f"[{host}]"
            object.__setattr__(self, "advertise_url", f"http://{host}:{self.port}")
        else:
            object.__setattr__(self, "advertise_url", self.advertise_url.rstrip("/"))

    @property
    def heartbeat_ttl_ms(self) -> int:
        return round(self.heartbeat_ttl_s * 1000)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def resolve_model_path(spec: str) -> str:
    """A file path, or `pkg:<package>/<file>` inside an installed package.

    The package is located without importing it: some model packages import optional
    dependencies at import time.
    """
    if spec.startswith(PKG_PREFIX):
        package, _, name = spec[len(PKG_PREFIX) :].partition("/")
        if not package or not name:
            raise ConfigError(f"--model-path: expected pkg:<package>/<file>, got {spec!r}")
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
        locations = list(found.submodule_search_locations or []) if found else []
        if not locations:
            raise ConfigError(f"--model-path: package {package!r} is not installed")
        path = os.path.join(locations[0], name)
    else:
        path = os.path.expanduser(spec)
    if not os.path.isfile(path):
        raise ConfigError(f"--model-path: no such file: {path}")
    return os.path.abspath(path)


def _int(text: str) -> int:
    return int(text)


def _optional_int(text: str) -> int | None:
    return None if text.strip().lower() == "auto" else int(text)


def _float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _str(text: str) -> str:
    return text


def _upper(text: str) -> str:
    return text.upper()


# (field, parser, help); the flag and the environment variable derive from the field.
OPTIONS: tuple[tuple[str, Callable[[str], object], str], ...] = (
    ("model_id", _str, "model id this worker serves (the request's `model`)"),
    ("model_path", _str, "GGUF file, or pkg:<package>/<file>"),
    ("redis_url", _str, "Redis URL for the registry"),
    ("host", _str, "address to listen on (default 127.0.0.1)"),
    ("port", _int, "port to listen on (default 9001)"),
    ("engine", _str, "llama (default), batched or fake"),
    ("worker_id", _str, "registry id (default HOST-PORT-random)"),
    ("advertise_url", _str, "URL routers use to reach this worker (default http://HOST:PORT)"),
    ("n_gpu_layers", _int, "layers to offload to the GPU; -1 for all (default 0)"),
    ("n_ctx", _int, "context length in tokens (default 4096)"),
    ("n_threads", _optional_int, "CPU threads for inference (default: llama.cpp's choice)"),
    ("slots", _int, "generations at once (default 1)"),
    ("max_queue", _int, "requests that may wait beyond the slots (default 64)"),
    ("heartbeat_interval_s", _float, "seconds between heartbeats (default 0.5)"),
    ("heartbeat_ttl_s", _float, "seconds the registry record lives unrefreshed (default 2.0)"),
    ("drain_timeout_s", _float, "seconds to let in-flight requests finish on shutdown (30)"),
    ("fake_ttft_ms", _float, "fake engine: time to first token in ms (default 20)"),
    ("fake_tokens_per_s", _float, "fake engine: tokens per second, <= 0 for no delay (200)"),
    ("log_level", _upper, "DEBUG, INFO (default), WARNING, ERROR"),
)


def env_name(field: str) -> str:
    return "REDIS_URL" if field == "redis_url" else f"WORKER_{field.upper()}"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="An OpenAI-compatible llama.cpp worker that registers itself in Redis.",
        epilog="Every option may also be set as WORKER_<OPTION> (e.g. WORKER_N_CTX); the Redis "
        "URL as REDIS_URL. Flags override the environment.",
    )
    for field, _, help_text in OPTIONS:
        parser.add_argument(
            flag_name(field),
            dest=field,
            metavar=field.upper(),
            help=f"{help_text} [env {env_name(field)}]",
        )
    return parser


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> WorkerConfig:
    """Parse flags over environment; raise ConfigError on any invalid value."""
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for field, parse, _ in OPTIONS:
        raw = args.get(field)
        if raw is None:
            raw = environ.get(env_name(field))
        if raw is None or raw == "":
            continue
        try:
            values[field] = parse(raw)
        except ValueError:
            raise ConfigError(
                f"{flag_name(field)} ({env_name(field)}): invalid value {raw!r}"
            ) from None
    model_path = values.get("model_path")
    if isinstance(model_path, str):
        values["model_path"] = resolve_model_path(model_path)
    values.setdefault("model_id", "")
    values.setdefault("redis_url", "")
    return WorkerConfig(**values)
