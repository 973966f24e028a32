"""The llama-server comparisons count failed requests by kind instead of dropping them."""

from __future__ import annotations

from benchmarks.external_worker import render
from benchmarks.llama_server import counted_loop, summarise
from benchmarks.llama_server import render as llama_server_render


async def test_failed_requests_are_counted_not_fatal() -> None:
    calls = 0

    async def request(subject: str) -> tuple[int, float]:
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            raise RuntimeError("http://x answered 0: ServerDisconnectedError")
        return 5, 0.01

    level = await counted_loop(request, concurrency=2, rounds=3)
    assert (level["requests"], level["errors"]) == (6, 2)
    assert level["error_kinds"] == {"ServerDisconnectedError": 2}
    assert level["completion_tokens"] == 20


def test_the_report_shows_errors_beside_throughput() -> None:
    row = {"concurrency": 4, "tokens_per_s": 90.0, "ttft_mean_ms": 200.0, "errors": 3}
    report = {
        "machine": {"cpu_model": "cpu", "nproc": 2}, "date": "d", "git_revision": "r",
        "slots": 2, "threads": 1, "n_ctx": 1024, "max_tokens": 32, "rounds": 2, "command": "c",
        "ours": [{**row, "errors": 0}], "llama-server": [row],
    }  # fmt: skip
    assert "| 4 | 90.0 | 90.0 | 200 ms | 200 ms | 0 | 3 |" in render(report)


def _level(c: int, tokens_per_s: float, ttft_ms: float, **errors: int) -> dict[str, object]:
    return {"concurrency": c, "tokens_per_s": tokens_per_s, "ttft_mean_ms": ttft_ms,
            "errors": sum(errors.values()), "error_kinds": errors}  # fmt: skip


def test_rounds_are_summarised_as_medians_of_paired_ratios() -> None:
    runs = {
        "ours": [[_level(8, 100, 200)], [_level(8, 120, 100, Timeout=1)], [_level(8, 90, 150)]],
        "llama-server": [[_level(8, 100, 100)], [_level(8, 60, 100)], [_level(8, 100, 50)]],
    }
    (row,) = summarise(runs)
    assert row["ours"]["tokens_per_s"] == {"median": 100, "min": 90, "max": 120}
    assert row["ours"]["ttft_mean_ms"]["median"] == 150
    assert (row["ours"]["errors"], row["ours"]["error_kinds"]) == (1, {"Timeout": 1})
    assert row["llama-server"]["errors"] == 0
    # Paired round by round: 1.0, 2.0, 0.9 (not 100 / 100 from the two medians).
    assert row["throughput_ratio"] == {"median": 1.0, "min": 0.9, "max": 2.0}
    assert row["ttft_ratio"] == {"median": 2.0, "min": 1.0, "max": 3.0}
    report = {
        "machine": {"cpu_model": "cpu", "nproc": 2}, "date": "d", "git_revision": "r",
        "slots": 2, "threads": 1, "n_ctx": 1024, "max_tokens": 32, "rounds": 3, "command": "c",
        "summary": [row],
    }  # fmt: skip
    line = "| 8 | 100.0 (90.0-120.0) | 100.0 (60.0-100.0) | **1.00x (0.90-2.00)** | "
    assert line + "150 (100-200) ms | 100 (50-100) ms | **2.00x (1.00-3.00)** | 1 / 0 |" in (
        llama_server_render(report)
    )
