"""The batched scenario's options; its command line is generated from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.flags import RESULTS_DIR, option

ENGINES = ("single", "batched")


@dataclass(frozen=True, slots=True)
class Options:
    model: str = field(metadata=option("GGUF file, or pkg:<package>/<file>"))
    n_gpu_layers: int = field(default=0, metadata=option())
    threads: int | None = field(default=None, metadata=option("default: llama.cpp's"))
    concurrency: tuple[int, ...] = field(
        default=(1, 4, 8, 16), metadata=option("comma-separated levels")
    )
    max_tokens: int = field(default=128, metadata=option())
    rounds: int = field(default=1, metadata=option("requests per client and level"))
    n_ctx: int = field(default=1024, metadata=option("context per stream"))
    prefill_chunk: int = field(default=256, metadata=option())
    kv_unified: bool = field(default=False, metadata=option("batched: one shared KV cache"))
    engines: tuple[str, ...] = field(default=ENGINES, metadata=option("single and/or batched"))
    bare: bool = field(default=True, metadata=option("skip the bare loop"))
    http: bool = field(default=False, metadata=option("also through worker processes"))
    out: Path = field(default=RESULTS_DIR, metadata=option())
    label: str = field(default="cpu", metadata=option("names the output files"))
    git_rev: str | None = field(default=None, metadata=option("default: asked of git"))
    # Set in the child process that runs one part (see cli.in_subprocess).
    part: str | None = field(default=None, metadata=option(choices=("bare", *ENGINES), hidden=True))
    part_json: Path | None = field(default=None, metadata=option(hidden=True))

    def __post_init__(self) -> None:
        if not set(self.engines) <= set(ENGINES):
            raise ValueError("--engines: expected single and/or batched")
