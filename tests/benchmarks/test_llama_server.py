"""The llama-server comparisons count failed requests by kind instead of dropping them."""

from __future__ import annotations

from benchmarks.external_worker import render
from benchmarks.llama_server import counted_loop


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
