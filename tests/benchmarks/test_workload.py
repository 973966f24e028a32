"""Arrival processes and request workloads: seeded, with the right statistics, and JSONL input."""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path

import orjson
import pytest

from benchmarks.arrivals import arrival_offsets
from benchmarks.workload import (
    DatasetError,
    LengthDist,
    RequestInput,
    SyntheticWorkload,
    load_jsonl,
)

# --- arrivals --------------------------------------------------------------------------------


def gaps(offsets: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(offsets)]


def test_poisson_arrivals_are_seeded_with_the_right_mean_rate() -> None:
    a = arrival_offsets(rate=20.0, seed=1, count=20_000)
    assert a == arrival_offsets(rate=20.0, seed=1, count=20_000)
    assert a != arrival_offsets(rate=20.0, seed=2, count=20_000)
    assert a[0] == 0.0 and all(y >= x for x, y in itertools.pairwise(a))
    g = gaps(a)
    # Exponential gaps: mean 1/rate, coefficient of variation 1 (20k samples: within ~3 %).
    assert statistics.fmean(g) == pytest.approx(1 / 20.0, rel=0.03)
    assert statistics.pstdev(g) / statistics.fmean(g) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_burstiness_keeps_the_mean_and_sets_the_spread(burstiness: float) -> None:
    g = gaps(arrival_offsets(rate=5.0, burstiness=burstiness, seed=3, count=20_000))
    mean = statistics.fmean(g)
    assert mean == pytest.approx(1 / 5.0, rel=0.05)
    # Gamma with shape k: coefficient of variation 1/sqrt(k).
    assert statistics.pstdev(g) / mean == pytest.approx(1 / math.sqrt(burstiness), rel=0.08)


def test_arrivals_bounded_by_duration_and_infinite_rate() -> None:
    a = arrival_offsets(rate=100.0, seed=0, duration_s=10.0)
    assert all(t < 10.0 for t in a)
    assert len(a) == pytest.approx(1000, rel=0.1)
    assert len(arrival_offsets(rate=100.0, seed=0, count=50, duration_s=10.0)) == 50
    assert arrival_offsets(rate=math.inf, count=4) == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        arrival_offsets(rate=math.inf, duration_s=1.0)
    with pytest.raises(ValueError):
        arrival_offsets(rate=0.0, count=1)
    with pytest.raises(ValueError):
        arrival_offsets(rate=1.0, burstiness=0.0, count=1)


# --- length distributions and synthetic prompts ----------------------------------------------


def test_length_dist_parse() -> None:
    assert LengthDist.parse("128") == LengthDist("fixed", 128)
    assert LengthDist.parse("fixed:16") == LengthDist("fixed", 16)
    assert LengthDist.parse("uniform:10,20") == LengthDist("uniform", 10, 20)
    assert LengthDist.parse("normal:100,15") == LengthDist("normal", 100, 15)
    assert str(LengthDist.parse("uniform:10,20")) == "uniform:10,20"
    for bad in ("0", "1.5", "uniform:20,10", "uniform:5", "normal:0,1", "zipf:1", "x"):
        with pytest.raises(ValueError):
            LengthDist.parse(bad)


def test_synthetic_lengths_follow_their_distribution() -> None:
    fixed = SyntheticWorkload(LengthDist("fixed", 12), LengthDist("fixed", 7), seed=0)
    for i in range(20):
        req = fixed.get(i)
        ((role, content),) = req.messages
        assert role == "user" and len(content.split()) == 12 == req.prompt_words
        assert req.max_tokens == 7

    uniform = SyntheticWorkload(LengthDist("uniform", 5, 9), LengthDist("uniform", 1, 3), seed=4)
    words = [uniform.get(i).prompt_words for i in range(2000)]
    outs = [uniform.get(i).max_tokens for i in range(2000)]
    assert set(words) == {5, 6, 7, 8, 9}
    assert set(outs) == {1, 2, 3}
    assert statistics.fmean(w for w in words if w is not None) == pytest.approx(7.0, abs=0.15)

    normal = SyntheticWorkload(LengthDist("normal", 50, 10), None, seed=5)
    sample = [normal.get(i).prompt_words or 0 for i in range(3000)]
    assert statistics.fmean(sample) == pytest.approx(50, abs=1.0)
    assert statistics.pstdev(sample) == pytest.approx(10, rel=0.1)
    assert normal.get(0).max_tokens is None
    assert "max_tokens" not in normal.get(0).payload()

    clipped = SyntheticWorkload(LengthDist("normal", 1, 50), None, seed=6)
    assert min(clipped.get(i).prompt_words or 0 for i in range(500)) >= 1


def test_synthetic_is_seeded_per_index() -> None:
    w = SyntheticWorkload(LengthDist("uniform", 5, 50), LengthDist("fixed", 8), seed=9)
    again = SyntheticWorkload(LengthDist("uniform", 5, 50), LengthDist("fixed", 8), seed=9)
    other = SyntheticWorkload(LengthDist("uniform", 5, 50), LengthDist("fixed", 8), seed=10)
    assert [w.get(i) for i in range(10)] == [again.get(i) for i in range(10)]
    assert w.get(3) == w.get(3)  # a pure function of the index, whatever came before
    assert [w.get(i) for i in range(10)] != [other.get(i) for i in range(10)]
    prompts = {w.get(i).messages for i in range(50)}
    assert len(prompts) == 50  # no two requests share a prompt
    with_system = SyntheticWorkload(LengthDist("fixed", 3), None, system_prompt="Be brief.")
    assert with_system.get(0).messages[0] == ("system", "Be brief.")


# --- JSONL -----------------------------------------------------------------------------------


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_bytes(
        b"\n".join(x if isinstance(x, bytes) else orjson.dumps(x) for x in lines) + b"\n"
    )
    return path


def test_jsonl_formats(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "d.jsonl",
        [
            b"# a comment",
            {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5},
            b"",
            {
                "messages": [
                    {"role": "system", "content": "sys"},
                    {"role": "user", "content": "one two three"},
                    {"role": "assistant", "content": "a b c d"},
                ]
            },
            {"prompt": "just a prompt"},
            {
                "conversations": [
                    {"from": "system", "value": "ignored"},
                    {"from": "human", "value": "question here"},
                    {"from": "gpt", "value": "x y z"},
                ]
            },
        ],
    )
    data = load_jsonl(path, seed=0)
    assert data.items == (
        RequestInput((("user", "hello there"),), 5, 2),
        RequestInput((("system", "sys"), ("user", "one two three")), 4, 4),
        RequestInput((("user", "just a prompt"),), None, 3),
        RequestInput((("user", "question here"),), 3, 2),
    )
    # A seeded shuffled order, cycled: each pass holds every item once.
    first = [data.get(i) for i in range(4)]
    assert sorted(map(repr, first)) == sorted(map(repr, data.items))
    assert [data.get(i) for i in range(4, 8)] == first
    assert [load_jsonl(path, seed=0).get(i) for i in range(4)] == first
    # --output-len overrides every max_tokens.
    fixed = load_jsonl(path, seed=0, output_len=LengthDist("fixed", 9))
    assert {fixed.get(i).max_tokens for i in range(8)} == {9}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "2:"),
        (orjson.dumps({"nothing": 1}), "expected a 'messages'"),
        (orjson.dumps({"messages": []}), "non-empty list"),
        (orjson.dumps({"prompt": "x", "max_tokens": 0}), "max_tokens"),
        (orjson.dumps({"conversations": [{"from": "gpt", "value": "x"}]}), "no human turn"),
        (orjson.dumps([1, 2]), "JSON object"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, line: bytes, message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [{"prompt": "fine"}, line])
    with pytest.raises(DatasetError, match=message) as info:
        load_jsonl(path)
    assert f"{path}:2:" in str(info.value)


def test_jsonl_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no requests"):
        load_jsonl(path)
