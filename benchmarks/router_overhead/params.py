"""The router_overhead scenario's parameters and targets."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.flags import option

CHAT_PATH = "/v1/chat/completions"
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 3.0
TARGET_RPS = 2000.0


@dataclass(frozen=True, slots=True)
class Params:
    rounds: int = field(default=10, metadata=option("interleaved rounds per arm"))
    requests_per_round: int = field(default=1000, metadata=option())
    concurrencies: tuple[int, ...] = field(
        default=(1, 32), metadata=option("e.g. 1,32", flag="--concurrency")
    )
    warmup_requests: int = 200
    max_tokens: int = field(default=8, metadata=option())
    model_id: str = "bench-model"
    fake_tokens_per_s: float = 0.0
    worker_slots: int = 64
    worker_max_queue: int = 1024
    rps_workers: int = field(default=3, metadata=option())
    rps_concurrencies: tuple[int, ...] = field(
        default=(16, 32, 64, 128, 256), metadata=option(flag="--rps-concurrency")
    )
    rps_duration_s: float = field(default=10.0, metadata=option())
    client: str = field(default="auto", metadata=option(choices=("auto", "wrk", "python")))
    pin: bool = field(default=True, metadata=option("do not pin router / the rest to CPUs"))

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.requests_per_round < 1:
            raise ValueError("rounds and requests-per-round must be >= 1")
        if self.client not in ("auto", "wrk", "python"):
            raise ValueError(f"client must be auto, wrk or python, got {self.client!r}")
        if self.rps_duration_s <= 0 or self.rps_workers < 1:
            raise ValueError("rps-duration-s must be > 0 and rps-workers >= 1")
