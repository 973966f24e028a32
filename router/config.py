"""The router's settings, parsed once at start and never mutated.

Every field is also a flag and an environment variable (contract.options derives them): `--port`
or ROUTER_PORT; the Redis URL also reads REDIS_URL. `parse_config` exits 2 on a bad value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from contract.keyspace import Keyspace, check_prefix
from contract.logs import LogFormat
from contract.options import LogLevel, Options, is_redis_url, member, meta
from contract.secrets import ADMIN_KEY_ENV, SECRET_ENV, load_secret, secret_file
from contract.tracing import check_endpoint
from router.apikeys import DEFAULT_CACHE_TTL_S, MAX_CACHE_TTL_S
from router.balancer import DEFAULT_IMBALANCE, PolicyName

POSITIVE_FIELDS = (
    "registry_refresh_s",
    "worker_stale_s",
    "connect_timeout_s",
    "read_timeout_s",
    "first_token_timeout_s",
    "body_timeout_s",
    "queue_timeout_s",
    "breaker_open_s",
    "max_stream_s",
    "concurrency_lease_s",
)


def _domain(text: str) -> str:
    return text.strip().strip(".").lower()


@dataclass(frozen=True, slots=True)
class RouterConfig:
    redis_url: str = field(metadata=meta("Redis URL", env=("REDIS_URL",), metavar="URL"))
    redis_prefix: str = field(
        default="",
        metadata=meta("prefix of every Redis key and channel (deployments sharing one Redis)"),
    )
    host: str = field(default="127.0.0.1", metadata=meta("address to listen on"))
    port: int = field(default=8080, metadata=meta("port to listen on"))
    metrics_port: int | None = field(
        default=None,
        metadata=meta("serve /metrics only on this port (same host); auto: on --port"),
    )
    admin_port: int | None = field(
        default=None,
        metadata=meta("serve the admin API (router.admin_api) on this port, same host; auto: off"),
    )
    processes: int = field(
        default=1,
        metadata=meta(
            "router processes sharing --port (SO_REUSEPORT, router.processes); process i serves "
            "metrics on --metrics-port + i, process 0 alone the admin API"
        ),
    )
    backlog: int = field(
        default=4096,
        metadata=meta("listen queue of --port; the kernel caps it at net.core.somaxconn"),
    )
    admin_key_file: str | None = field(
        default=None,
        metadata=meta(
            f"file holding the admin API's key (else ${ADMIN_KEY_ENV}); required with --admin-port",
            parse=secret_file,
            metavar="PATH",
        ),
    )
    admin_redis_url: str | None = field(
        default=None,
        metadata=meta(
            "Redis URL of the admin API (a user that may write tenancy); default: --redis-url",
            metavar="URL",
        ),
    )
    registry_refresh_s: float = field(
        default=1.0, metadata=meta("period of the full registry re-read")
    )
    worker_stale_s: float = field(
        default=2.5, metadata=meta("drop a worker this long after its last heartbeat")
    )
    connect_timeout_s: float = field(default=3.0, metadata=meta("timeout to connect to a worker"))
    read_timeout_s: float = field(
        default=300.0, metadata=meta("longest silence between two upstream chunks")
    )
    max_attempts: int = field(
        default=3, metadata=meta("distinct workers tried before the first upstream byte")
    )
    max_body_bytes: int = field(default=4 * 1024 * 1024, metadata=meta("largest request body"))
    shutdown_timeout_s: float = field(
        default=30.0, metadata=meta("grace for in-flight requests on SIGTERM")
    )
    log_level: LogLevel = field(
        default=LogLevel.INFO, metadata=meta("log level; DEBUG adds an access log")
    )
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
    auth: bool = field(
        default=True, metadata=meta("API keys required; off is for local development only")
    )
    base_domain: str | None = field(
        default=None,
        metadata=meta(
            "DNS suffix of {endpoint}.{project}.DOMAIN hosts", parse=_domain, metavar="DOMAIN"
        ),
    )
    key_cache_ttl_s: float = field(
        default=DEFAULT_CACHE_TTL_S,
        metadata=meta(
            f"a revoked key stops working within this everywhere; at most {MAX_CACHE_TTL_S:g}"
        ),
    )
    policy: PolicyName = field(
        default=PolicyName.LEAST_LOADED, metadata=meta("how a worker is chosen")
    )
    cache_imbalance: int = field(
        default=DEFAULT_IMBALANCE,
        metadata=meta(
            "cache-aware: a request's cached worker is passed over for the least-loaded one once "
            "it has more than this many requests more"
        ),
    )
    cache_wait_s: float = field(
        default=1.0,
        metadata=meta(
            "cache-aware: how long a queued request is served before others only by its cached "
            "worker; after that, by the first worker that frees (0: never preferred)"
        ),
    )
    first_token_timeout_s: float = field(
        default=300.0,
        metadata=meta("request sent to first byte back (non-stream: the answer), else 504"),
    )
    max_stream_s: float = field(
        default=3600.0, metadata=meta("longest a stream is relayed, then an SSE error ends it")
    )
    max_frame_bytes: int = field(
        default=1024 * 1024, metadata=meta("largest upstream SSE frame, else the stream ends")
    )
    max_response_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata=meta("largest plain (non-stream) upstream answer, else 502"),
    )
    body_timeout_s: float = field(
        default=30.0, metadata=meta("time to receive a client's request body, else 408")
    )
    queue_max: int = field(
        default=256, metadata=meta("requests waiting for worker capacity per model, else 503")
    )
    queue_timeout_s: float = field(
        default=30.0, metadata=meta("longest wait in that queue, then 503")
    )
    breaker_failures: int = field(
        default=2, metadata=meta("failures in a row that put a worker aside")
    )
    breaker_open_s: float = field(
        default=1.0, metadata=meta("first time a worker is put aside; doubles up to 30 s")
    )
    reserve_max_tokens: int = field(
        default=512,
        metadata=meta(
            "tokens reserved against a key's TPM per choice of a request without max_tokens "
            "(the worker's default length)"
        ),
    )
    concurrency_lease_s: float = field(
        default=30.0,
        metadata=meta(
            "a key's concurrency slot held by a router that died is freed after this; "
            "live routers renew theirs"
        ),
    )
    worker_secret_file: str | None = field(
        default=None,
        metadata=meta(
            f"file holding the secret sent to workers (else ${SECRET_ENV}; neither: none)",
            parse=secret_file,
            metavar="PATH",
        ),
    )

    def __post_init__(self) -> None:
        if not is_redis_url(self.redis_url):
            # The URL itself is not echoed: it may carry a password.
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        check_prefix(self.redis_prefix)
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        if self.metrics_port is not None and not 0 < self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be between 1 and 65535, got {self.metrics_port}")
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError("metrics_port must differ from port")
        self._check_admin()
        self._check_processes()
        for name in POSITIVE_FIELDS:
            value = getattr(self, name)
            if not value > 0:  # also rejects NaN
                raise ValueError(f"{name} must be > 0, got {value}")
        self._check_limits()
        if self.cache_imbalance < 0 or not self.cache_wait_s >= 0:
            raise ValueError("cache_imbalance and cache_wait_s must be >= 0")
        object.__setattr__(self, "policy", member("policy", self.policy, PolicyName))
        object.__setattr__(self, "log_level", member("log_level", self.log_level, LogLevel))
        object.__setattr__(self, "log_format", member("log_format", self.log_format, LogFormat))
        check_endpoint(self.otlp_endpoint)

    @property
    def keyspace(self) -> Keyspace:
        return Keyspace(self.redis_prefix)

    def worker_secret(self, environ: Mapping[str, str]) -> str | None:
        """What every worker request carries as `Authorization: Bearer ...` (contract.secrets);
        ConfigError if the file cannot be read."""
        return load_secret(self.worker_secret_file, environ)

    def admin_key(self, environ: Mapping[str, str]) -> str | None:
        """The admin API's bearer key (contract.secrets); ConfigError if the file is unreadable."""
        return load_secret(self.admin_key_file, environ, env=ADMIN_KEY_ENV, what="the admin key")

    @property
    def admin_redis(self) -> str:
        return self.admin_redis_url or self.redis_url

    def _check_admin(self) -> None:
        if self.admin_port is None:
            return
        if not 0 < self.admin_port <= 65535:
            raise ValueError(f"admin_port must be between 1 and 65535, got {self.admin_port}")
        if self.admin_port in (self.port, self.metrics_port):
            raise ValueError("admin_port must differ from port and metrics_port")
        if not is_redis_url(self.admin_redis):
            raise ValueError("admin_redis_url must start with redis://, rediss:// or unix://")

    def _check_processes(self) -> None:
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        if self.backlog < 1:
            raise ValueError(f"backlog must be >= 1, got {self.backlog}")
        if self.processes == 1:
            return
        if self.port == 0:
            raise ValueError("processes > 1 needs a fixed port (not 0) for them to share")
        if self.metrics_port is not None:
            ports = range(self.metrics_port, self.metrics_port + self.processes)
            if ports[-1] > 65535 or self.port in ports or self.admin_port in ports:
                raise ValueError(
                    f"processes: metrics ports {ports[0]}..{ports[-1]} (one a process) must be "
                    "<= 65535 and differ from port and admin_port"
                )

    def _check_limits(self) -> None:
        if not self.shutdown_timeout_s >= 0:
            raise ValueError(f"shutdown_timeout_s must be >= 0, got {self.shutdown_timeout_s}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if not 0 <= self.key_cache_ttl_s <= MAX_CACHE_TTL_S:
            raise ValueError(
                f"key_cache_ttl_s must be between 0 and {MAX_CACHE_TTL_S}, "
                f"got {self.key_cache_ttl_s}"
            )
        if self.base_domain is not None and not self.base_domain.strip(". "):
            raise ValueError("base_domain must not be empty")
        if self.queue_max < 0:
            raise ValueError(f"queue_max must be >= 0, got {self.queue_max}")
        if self.breaker_failures < 1:
            raise ValueError(f"breaker_failures must be >= 1, got {self.breaker_failures}")
        if self.reserve_max_tokens < 1:
            raise ValueError(f"reserve_max_tokens must be >= 1, got {self.reserve_max_tokens}")
        for name in ("max_frame_bytes", "max_response_bytes"):
            if getattr(self, name) < 1024:
                raise ValueError(f"{name} must be >= 1024, got {getattr(self, name)}")


OPTIONS = Options(
    RouterConfig,
    env_prefix="ROUTER_",
    prog="python -m router",
    description="OpenAI-compatible load-balancing router for llama.cpp workers.",
)


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> RouterConfig:
    """Flags over environment over defaults; a bad value exits 2 with one clear line."""
    return OPTIONS.parse(argv, environ)
