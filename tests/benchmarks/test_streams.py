"""benchmarks.streams: a tiny real run end to end, and how a failed stream is classified."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from benchmarks.processes import free_port
from benchmarks.streams import Params, Tally, failure_kind, listen_counters, main, one_stream

pytestmark = pytest.mark.timeout(120)


def test_a_small_run_reports_every_level_and_process_count(tmp_path: Path) -> None:
    argv = ["--levels", "5,20", "--processes", "1,2", "--max-tokens", "10"]
    argv += ["--tokens-per-s", "20", "--rps-duration-s", "0", "--out", str(tmp_path), "--smoke"]
    assert main(argv) == 0
    data = json.loads((tmp_path / "streams.json").read_text())
    rows = data["figures"]["streams"]
    assert [(r["processes"], r["streams"]) for r in rows] == [(1, 5), (1, 20), (2, 20)]
    for row in rows:
        assert row["failures"] == {}
        assert row["ok"] == row["streams"]
        # 10 tokens and [DONE], at least: every one counted.
        assert row["chunks"] >= row["streams"] * 11
        assert row["cpu_us_per_chunk"] > 0
        # Streams of half a second: the 0.1 s sampler sees them open.
        assert 0 < row["rss_sampled_open"] <= row["peak_open"] <= row["streams"]
        assert row["rss_per_open_stream_kib"] is not None
        assert row["ttft"]["p99_ms"] >= row["ttft"]["p50_ms"] > 0
    assert "| 2 | 20 | 20 | 0 |" in (tmp_path / "streams.md").read_text()


async def test_a_refused_connection_is_counted_as_refused() -> None:
    tally, go = Tally(), asyncio.Event()
    go.set()
    async with aiohttp.ClientSession() as session:
        await one_stream(session, f"http://127.0.0.1:{free_port()}/v1/chat", b"{}", go, tally)
    assert tally.failures == {"refused": 1}
    assert tally.open == 0


def test_failure_kinds() -> None:
    assert failure_kind(ConnectionResetError(104, "reset")) == "reset"
    assert failure_kind(TimeoutError()) == "timeout"
    assert failure_kind(aiohttp.ServerDisconnectedError()) == "disconnected"
    assert failure_kind(aiohttp.ClientPayloadError("cut")) == "ClientPayloadError"


def test_listen_counters_read_the_kernel() -> None:
    counters = listen_counters()
    assert set(counters) == {"ListenOverflows", "ListenDrops"}
    assert min(counters.values()) >= 0


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="levels and processes"):
        Params(levels=(0,))
    with pytest.raises(ValueError, match="tokens-per-s"):
        Params(tokens_per_s=0)
