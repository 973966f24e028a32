"""The multi-turn conversation workload and the prefix-cache scenario's arithmetic."""

from __future__ import annotations

from pathlib import Path

from benchmarks import nginx
from benchmarks.conversations import Shape, Turn, questions, summary, system_prompts
from benchmarks.prefix_cache import comparisons, render_markdown


def test_shared_workload_shares_one_system_prompt_and_control_none() -> None:
    shared = system_prompts(Shape(conversations=3, system_words=40))
    control = system_prompts(Shape(conversations=3, system_words=40, shared_system=False))
    assert len(set(shared)) == 1 and len(shared[0].split()) > 40
    assert len(set(control)) == 3
    assert system_prompts(Shape(seed=5)) == system_prompts(Shape(seed=5))  # seeded
    asked = questions(Shape(conversations=2, turns=3))
    assert [len(q) for q in asked] == [3, 3] and asked[0] != asked[1]


def _turn(turn: int, ttft_s: float | None, prompt: int, cached: int, ok: bool = True) -> Turn:
    return Turn(0, turn, ok, None if ok else "http_503", ttft_s, 1.0, prompt, cached, 8)


def test_summary_counts_only_answered_turns() -> None:
    turns = [_turn(0, 0.2, 100, 0), _turn(1, 0.05, 120, 100), _turn(1, None, 0, 0, ok=False)]
    figures = summary(turns, wall_s=2.0)
    assert figures["errors"] == 1
    assert figures["hit_rate"] == 100 / 220
    assert figures["output_tokens_per_s"] == 16 / 2.0
    assert figures["p50_ttft_later_turns_ms"] == 50.0


def _run(workload: str, policy: str, routers: int, p50: float, hit: float) -> dict[str, object]:
    return {"workload": workload, "policy": policy, "routers": routers, "errors": 0,
            "p50_ttft_ms": p50, "p99_ttft_ms": p50 * 2, "output_tokens_per_s": 100.0,
            "hit_rate": hit}  # fmt: skip


def test_comparisons_are_ratios_of_medians() -> None:
    runs = [
        _run("shared", "least-loaded", 1, 1000.0, 0.4),
        _run("shared", "least-loaded", 1, 800.0, 0.4),
        _run("shared", "cache-aware", 1, 100.0, 0.9),
        _run("control", "least-loaded", 1, 500.0, 0.1),
        _run("control", "cache-aware", 1, 500.0, 0.1),
        _run("shared", "cache-aware", 2, 110.0, 0.81),
    ]
    out = comparisons(runs)
    assert out["shared"]["p50_ttft_lower_x"] == 9.0  # median 900 / 100
    assert out["control"]["throughput_x"] == 1.0
    assert round(out["replicas"]["hit_rate_x"], 6) == 0.9
    metadata = {
        "machine": {"cpu_model": "cpu", "nproc": 2},
        "git": {"head": "abc", "dirty": False},
        "date": "today",
        "command": "python -m benchmarks prefix_cache",
    }
    parameters = {"workers": 2, "slots": 4, "n_threads": 1, "conversations": 16, "turns": 6,
                  "max_tokens": 32, "rounds": 2}  # fmt: skip
    text = render_markdown({"parameters": parameters, "comparisons": out, "metadata": metadata})
    assert "9.00x lower" in text and "2 replicas" in text


def test_nginx_config_names_every_upstream(tmp_path: Path) -> None:
    text = nginx.config_text(tmp_path, 8080, ["http://127.0.0.1:9001", "http://127.0.0.1:9002"])
    assert "server 127.0.0.1:9001;" in text and "server 127.0.0.1:9002;" in text
    assert "listen 127.0.0.1:8080" in text and "proxy_buffering off;" in text
