"""The worker's configuration: one frozen value, parsed once from flags and environment.

Every field is also a flag and an environment variable (contract.options derives them): `--n-ctx`
or WORKER_N_CTX; the Redis URL also reads REDIS_URL. `load_config` raises ConfigError on a bad
value, `parse_config` exits 2 with it.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from contract.keyspace import Keyspace, check_prefix
from contract.logs import LogFormat
from contract.options import ConfigError as ConfigError
from contract.options import LogLevel, Options, check_one_of, is_redis_url, member, meta, require
from contract.registry import name_problem, url_problem
from contract.tracing import check_endpoint
from worker import models
from worker.auth import SECRET_ENV, secret_file
from worker.models import HubFile, is_hub_spec

EngineKind = Literal["llama", "fake", "batched"]
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
PKG_PREFIX = "pkg:"


def resolve_model_path(
    spec: str, cache_dir: str | None = None, environ: Mapping[str, str] = os.environ
) -> str:
    """A GGUF file, a directory holding exactly one, `pkg:<package>/<file>` inside an installed
    package, or `hf:ORG/REPO/FILE.gguf[@REVISION]` fetched into `cache_dir` (worker.models).
    """
    try:
        if is_hub_spec(spec):
            return models.fetch(HubFile.parse(spec), cache_dir, offline=models.offline(environ))
        return models.local_model(_package_file(spec) if spec.startswith(PKG_PREFIX) else spec)
    except models.ModelError as exc:
        raise ConfigError(str(exc)) from None


def _model_spec(spec: str) -> str:
    """The --model-path parser: a local spec resolves now; a hub spec is only checked here and
    fetched once the cache directory is known (WorkerConfig.__post_init__)."""
    if not is_hub_spec(spec):
        return resolve_model_path(spec)
    try:
        HubFile.parse(spec)
    except models.ModelError as exc:
        raise ConfigError(str(exc)) from None
    return spec


def _package_file(spec: str) -> str:
    """The file `pkg:<package>/<file>` names. The package is located without importing it: some
    model packages import optional dependencies at import time."""
    package, _, name = spec[len(PKG_PREFIX) :].partition("/")
    if not package or not name:
        raise ConfigError(f"expected pkg:<package>/<file>, got {spec!r}")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found else []
    if not locations:
        raise ConfigError(f"package {package!r} is not installed")
    return os.path.join(locations[0], name)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    model_id: str = field(metadata=meta("model id this worker serves (the request's `model`)"))
    redis_url: str = field(
        metadata=meta("Redis URL for the registry", env=("REDIS_URL",), metavar="URL")
    )
    redis_prefix: str = field(
        default="",
        metadata=meta("prefix of every Redis key and channel (deployments sharing one Redis)"),
    )
    model_path: str | None = field(
        default=None,
        metadata=meta(
            "GGUF file, directory holding one, pkg:<package>/<file> or "
            "hf:ORG/REPO/FILE.gguf[@REVISION]; only the fake engine needs none",
            parse=_model_spec,
            metavar="PATH",
        ),
    )
    model_cache_dir: str | None = field(
        default=None,
        metadata=meta(
            "cache of hf: models (HF_HUB_OFFLINE=1: never download); unset: the hub's default",
            metavar="DIR",
        ),
    )
    engine: EngineKind = field(
        default="llama", metadata=meta("inference engine; fake is for router tests")
    )
    host: str = field(default="127.0.0.1", metadata=meta("address to listen on"))
    port: int = field(default=9001, metadata=meta("port to listen on"))
    backlog: int = field(
        default=4096,
        metadata=meta("listen queue of --port; the kernel caps it at net.core.somaxconn"),
    )
    metrics_port: int | None = field(
        default=None,
        metadata=meta("serve /metrics only on this port (same host; /health on both); auto: PORT"),
    )
    worker_id: str = field(default="", metadata=meta("registry id; unset: HOST-PORT-random"))
    advertise_url: str = field(
        default="", metadata=meta("URL routers use to reach this worker; unset: http://HOST:PORT")
    )
    worker_secret_file: str | None = field(
        default=None,
        metadata=meta(
            f"file holding the secret routers must send (else ${SECRET_ENV}; neither: open)",
            parse=secret_file,
            metavar="PATH",
        ),
    )
    n_gpu_layers: int = field(default=0, metadata=meta("layers to offload to the GPU; -1 for all"))
    n_ctx: int = field(default=4096, metadata=meta("context length in tokens"))
    default_max_tokens: int = field(
        default=512,
        metadata=meta(
            "longest answer when a request names no max_tokens; 0: until the model stops or "
            "the context is full"
        ),
    )
    n_threads: int | None = field(
        default=None, metadata=meta("CPU threads for inference; auto: llama.cpp's choice")
    )
    embedding: bool = field(
        default=False,
        metadata=meta("serve POST /v1/embeddings with the model in embedding mode, not chat"),
    )
    slots: int = field(default=1, metadata=meta("generations at once"))
    max_queue: int = field(default=64, metadata=meta("requests that may wait beyond the slots"))
    heartbeat_interval_s: float = field(default=0.5, metadata=meta("seconds between heartbeats"))
    heartbeat_ttl_s: float = field(
        default=2.0, metadata=meta("seconds the registry record lives unrefreshed")
    )
    drain_timeout_s: float = field(
        default=30.0, metadata=meta("seconds to let in-flight requests finish on shutdown")
    )
    fake_ttft_ms: float = field(
        default=20.0, metadata=meta("fake engine: time to first token in ms")
    )
    fake_tokens_per_s: float = field(
        default=200.0, metadata=meta("fake engine: tokens per second, <= 0 for no delay")
    )
    fake_prefill_tokens_per_s: float = field(
        default=0.0,
        metadata=meta(
            "fake engine: prompt tokens evaluated per second, so the time to first token grows "
            "with the uncached part of the prompt; 0: a fixed fake_ttft_ms"
        ),
    )
    ignore_eos: bool = field(
        default=False,
        metadata=meta(
            "for benchmarks: generate past end-of-generation, so every answer has exactly its "
            "max_tokens (or the worker's default length)"
        ),
    )
    prompt_cache_mib: int = field(
        default=256,
        metadata=meta(
            "batched engine: MiB of host RAM for KV states of prompts moved out of the slots, "
            "restored when a conversation comes back; 0: off"
        ),
    )
    fake_fail_after_tokens: int = field(
        default=0,
        metadata=meta("fake engine: fail for good after this many tokens (tests); 0: never"),
    )
    log_level: LogLevel = field(default=LogLevel.INFO, metadata=meta("log level"))
    log_format: LogFormat = field(
        default=LogFormat.TEXT,
        metadata=meta("text (for a terminal) or json (one object a line, one line a request)"),
    )
    otlp_endpoint: str | None = field(
        default=None,
        metadata=meta(
            "send OpenTelemetry traces to this OTLP/HTTP URL (the otel extra); unset: off",
            metavar="URL",
        ),
    )

    def __post_init__(self) -> None:
        require(bool(self.model_id), "model_id is required")
        require(
            is_redis_url(self.redis_url),
            # The URL itself is not echoed: it may carry a password.
            "redis_url: expected redis://, rediss:// or unix://",
        )
        require(
            self.metrics_port is None or 1 <= self.metrics_port <= 65535,
            "metrics_port: expected 1..65535",
        )
        require(self.metrics_port != self.port, "metrics_port: must differ from the port")
        require(self.fake_fail_after_tokens >= 0, "fake_fail_after_tokens: expected >= 0")
        check_prefix(self.redis_prefix)
        check_one_of("engine", self.engine, get_args(EngineKind))
        require(
            self.engine == "fake" or self.model_path is not None,
            f"model_path is required for the {self.engine} engine",
        )
        require(1 <= self.port <= 65535, "port: expected 1..65535")
        require(self.backlog >= 1, "backlog: expected >= 1")
        require(self.n_gpu_layers >= -1, "n_gpu_layers: expected >= -1")
        require(self.n_ctx >= 16, "n_ctx: expected >= 16")
        require(self.default_max_tokens >= 0, "default_max_tokens: expected >= 0")
        require(self.n_threads is None or self.n_threads >= 1, "n_threads: expected >= 1")
        require(not self.embedding or self.engine == "llama", "embedding: needs the llama engine")
        require(self.slots >= 1, "slots: expected >= 1")
        require(self.max_queue >= 0, "max_queue: expected >= 0")
        require(self.prompt_cache_mib >= 0, "prompt_cache_mib: expected >= 0")
        require(self.heartbeat_interval_s > 0, "heartbeat_interval_s: expected > 0")
        require(
            self.heartbeat_ttl_s > self.heartbeat_interval_s,
            "heartbeat_ttl_s: must be longer than the heartbeat interval, or the record expires "
            "between heartbeats",
        )
        require(self.drain_timeout_s >= 0, "drain_timeout_s: expected >= 0")
        require(self.fake_ttft_ms >= 0, "fake_ttft_ms: expected >= 0")
        require(self.fake_prefill_tokens_per_s >= 0, "fake_prefill_tokens_per_s: expected >= 0")
        object.__setattr__(self, "log_level", member("log_level", self.log_level, LogLevel))
        object.__setattr__(self, "log_format", member("log_format", self.log_format, LogFormat))
        check_endpoint(self.otlp_endpoint)
        self._derive_defaults()
        # What routers would reject when they read this worker's record.
        for problem in (
            name_problem("model_id", self.model_id),
            name_problem("worker_id", self.worker_id),
            url_problem(self.advertise_url, "advertise_url"),
        ):
            require(problem is None, problem or "")
        if self.model_path is not None and is_hub_spec(self.model_path):
            # Last, once the cheap checks passed; before the event loop (worker.models).
            try:
                path = resolve_model_path(self.model_path, self.model_cache_dir)
            except ConfigError as exc:
                raise ConfigError(f"model_path: {exc}") from None
            object.__setattr__(self, "model_path", path)

    def _derive_defaults(self) -> None:
        # A frozen dataclass can only fill these in after __init__.
        host = socket.gethostname() if self.host in WILDCARD_HOSTS else self.host
        if not self.worker_id:
            object.__setattr__(self, "worker_id", f"{host}-{self.port}-{secrets.token_hex(3)}")
        if not self.advertise_url:
            if ":" in host:  # IPv6 literal
                host = f"[{host}]"
            object.__setattr__(self, "advertise_url", f"http://{host}:{self.port}")
        else:
            object.__setattr__(self, "advertise_url", self.advertise_url.rstrip("/"))

    @property
    def keyspace(self) -> Keyspace:
        return Keyspace(self.redis_prefix)

    @property
    def heartbeat_ttl_ms(self) -> int:
        return round(self.heartbeat_ttl_s * 1000)


OPTIONS = Options(
    WorkerConfig,
    env_prefix="WORKER_",
    prog="python -m worker",
    description="An OpenAI-compatible llama.cpp worker that registers itself in Redis.",
)


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> WorkerConfig:
    """Flags over environment over defaults; raise ConfigError on an invalid value."""
    return OPTIONS.load(argv, environ)


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> WorkerConfig:
    """As load_config, but exit 2 with one clear line on an invalid value."""
    return OPTIONS.parse(argv, environ)
