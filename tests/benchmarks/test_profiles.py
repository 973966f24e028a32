"""benchmarks.profiles: a tiny real run of each target, and the py-spy summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.profiles.hotpath import folded_summary, main

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(("target", "stream"), [("floor", True), ("router", False)])
def test_a_small_run_relays_every_request_and_counts_its_cpu(
    target: str, stream: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", target, "--requests", "40", "--warmup", "5", "--concurrency", "2"]
    assert main([*argv, "--stream"] if stream else argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["failed"] == 0
    assert result["target"] == target and result["stream"] is stream
    assert result["cpu_us_per_request"] > 0
    assert result["rss_idle_mib"] > 0


def test_folded_stacks_are_summarised_by_own_and_inclusive_time(tmp_path: Path) -> None:
    raw = tmp_path / "router.folded"
    raw.write_text("main;dispatch;parse 3\nmain;dispatch 1\n")
    summary = folded_summary(raw, 5)
    assert summary.splitlines()[0] == "4 samples"
    assert "75.0%  parse" in summary  # own time: the leaf
    assert "100.0%  dispatch" in summary  # inclusive: anywhere on the stack
