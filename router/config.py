"""The router's settings, parsed once at start (see router.cli) and never mutated."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from router.balancer import PolicyName

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
MAX_KEY_CACHE_TTL_S = 5.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    redis_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    registry_refresh_s: float = 1.0  # period of the full registry re-read
    worker_stale_s: float = 2.5  # drop a worker this long after the last heartbeat we saw
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 300.0  # longest silence between two upstream chunks
    max_attempts: int = 3  # distinct workers tried before the first upstream byte
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    shutdown_timeout_s: float = 30.0  # in-flight requests get this long after SIGTERM
    log_level: str = "INFO"
    # Tenancy. auth=False is for local development only: no key is asked for.
    auth: bool = True
    base_domain: str | None = None  # DNS suffix of `{endpoint}.{project}.{base_domain}` hosts
    key_cache_ttl_s: float = 2.0  # a revoked key stops working within this on every replica
    # -- Overload and faults (router.admission, router.breaker, router.proxy) --
    policy: PolicyName = PolicyName.LEAST_LOADED
    first_token_timeout_s: float = 300.0  # request sent -> first byte back (non-stream: answer)
    body_timeout_s: float = 30.0  # longest time to receive a client's request body
    queue_max: int = 256  # requests waiting for worker capacity, per model; more get 503
    queue_timeout_s: float = 30.0  # longest wait in that queue; then 503
    breaker_failures: int = 2  # consecutive failures that put a worker aside
    breaker_open_s: float = 1.0  # first time aside before a probe; doubles up to 30 s
    # -- end of overload and faults --

    def __post_init__(self) -> None:
        scheme = urlsplit(self.redis_url).scheme
        if scheme not in REDIS_SCHEMES:
            # The URL itself is not echoed: it may carry a password.
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        if not self.host:
            raise ValueError("host must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {self.port}")
        for name in (
            "registry_refresh_s",
            "worker_stale_s",
            "connect_timeout_s",
            "read_timeout_s",
        ):
            value = getattr(self, name)
            if not value > 0:  # also rejects NaN
                raise ValueError(f"{name} must be > 0, got {value}")
        if not self.shutdown_timeout_s >= 0:
            raise ValueError(f"shutdown_timeout_s must be >= 0, got {self.shutdown_timeout_s}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if not 0 <= self.key_cache_ttl_s <= MAX_KEY_CACHE_TTL_S:
            raise ValueError(
                f"key_cache_ttl_s must be between 0 and {MAX_KEY_CACHE_TTL_S}, "
                f"got {self.key_cache_ttl_s}"
            )
        if self.base_domain is not None and not self.base_domain.strip(". "):
            raise ValueError("base_domain must not be empty")
        self._check_overload()
        if self.log_level not in LOG_LEVELS:
            raise ValueError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )

    def _check_overload(self) -> None:
        if self.policy not in set(PolicyName):
            names = ", ".join(PolicyName)
            raise ValueError(f"policy must be one of {names}, got {self.policy!r}")
        object.__setattr__(self, "policy", PolicyName(self.policy))
        for name in (
            "first_token_timeout_s",
            "body_timeout_s",
            "queue_timeout_s",
            "breaker_open_s",
        ):
            value = getattr(self, name)
            if not value > 0:  # also rejects NaN
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.queue_max < 0:
            raise ValueError(f"queue_max must be >= 0, got {self.queue_max}")
        if self.breaker_failures < 1:
            raise ValueError(f"breaker_failures must be >= 1, got {self.breaker_failures}")
