"""Scenario command lines generated from their parameter dataclasses: every flag name and
default as the scenarios have always taken them."""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import ModuleType

import pytest

from benchmarks import balancing, real_model, scale_out
from benchmarks.flags import RESULTS_DIR, option, params_from, parse_params, scenario_parser
from benchmarks.router_overhead import Params as OverheadParams
from benchmarks.router_overhead.cli import CLI as OVERHEAD_CLI


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings} - {"-h", "--help"}


@dataclass(frozen=True, slots=True)
class Demo:
    name: str = field(metadata=option("required: no default"))
    count: int = field(default=3, metadata=option("how many"))
    levels: tuple[int, ...] = field(default=(1, 2), metadata=option(flag="--level"))
    ratio: float | None = field(default=None, metadata=option())
    path: Path = field(default=Path("x"), metadata=option())
    stream: bool = field(default=True, metadata=option("plain"))
    fast: bool = field(default=False, metadata=option())
    secret: str = field(default="s", metadata=option(hidden=True))
    internal: int = 7  # not on the command line

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")


def test_flags_types_and_defaults() -> None:
    parser = scenario_parser(Demo, "demo", "a demo", extras=("out", "smoke"))
    assert flags(parser) == {
        "--name", "--count", "--level", "--ratio", "--path", "--no-stream", "--fast",
        "--secret", "--out", "--smoke",
    }  # fmt: skip
    args = parser.parse_args(["--name", "n"])
    demo = params_from(Demo, args)
    assert demo == Demo(name="n")
    assert args.out == RESULTS_DIR and args.smoke is False
    args = parser.parse_args(
        ["--name", "n", "--count", "5", "--level", "4,8", "--ratio", "0.5", "--no-stream",
         "--fast", "--path", "/p"]
    )  # fmt: skip
    assert params_from(Demo, args) == Demo(
        name="n", count=5, levels=(4, 8), ratio=0.5, path=Path("/p"), stream=False, fast=True
    )
    assert "secret" not in parser.format_help() and "how many (default: 3)" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --name is required
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "n", "--level", "0"])  # levels are >= 1


def test_rejected_values_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    parser = scenario_parser(Demo, "demo", "a demo", extras=())
    assert parse_params(parser, Demo, ["--name", "n", "--count", "-1"]) is None
    assert "error: count must be >= 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (
            balancing,
            "--duration-s --rounds --load-fraction --burstiness --policies --fast-workers "
            "--slow-workers --fast-tokens-per-s --slow-tokens-per-s --slots --output-tokens "
            "--warmup-requests --seed --out --smoke --no-progress",
        ),
        (
            real_model,
            "--workers --concurrency --num-requests --warmup-requests --prompt-words "
            "--max-tokens --n-threads --model-path --model-id --seed --out --smoke --no-plots "
            "--no-progress",
        ),
        (
            scale_out,
            "--routers --workers --concurrency --duration-s --warmup-requests --max-tokens "
            "--no-stream --client-procs --no-pin --out --smoke --no-plots",
        ),
    ],
)
def test_scenario_flags(module: ModuleType, expected: str) -> None:
    parser = module.CLI.parser()
    assert flags(parser) == set(expected.split())
    defaults = params_from(module.Params, parser.parse_args([]))
    assert defaults == module.Params()  # every default is the dataclass's


def test_router_overhead_flags() -> None:
    parser = OVERHEAD_CLI.parser()
    assert flags(parser) == {
        "--rounds", "--requests-per-round", "--concurrency", "--max-tokens", "--rps-workers",
        "--rps-concurrency", "--rps-duration-s", "--client", "--no-pin", "--out",
    }  # fmt: skip
    args = parser.parse_args(["--concurrency", "1,3", "--client", "python", "--no-pin"])
    params = params_from(OverheadParams, args)
    assert (params.concurrencies, params.client, params.pin) == ((1, 3), "python", False)
    assert params.rounds == 10 and params.rps_concurrencies == (16, 32, 64, 128, 256)
    with pytest.raises(SystemExit):
        parser.parse_args(["--client", "curl"])


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama_cpp")
def test_batched_flags() -> None:
    from benchmarks.batched.params import Options

    parser = scenario_parser(Options, "p", "d", extras=())
    expected = (
        "--model --n-gpu-layers --threads --concurrency --max-tokens --rounds --n-ctx "
        "--prefill-chunk --kv-unified --engines --no-bare --http --out --label --git-rev "
        "--part --part-json"
    )
    assert flags(parser) == set(expected.split())
    opts = params_from(Options, parser.parse_args(["--model", "m.gguf", "--engines", "batched"]))
    assert opts.engines == ("batched",) and opts.concurrency == (1, 4, 8, 16) and opts.bare
    assert [f.name for f in fields(Options)][-2:] == ["part", "part_json"]
    with pytest.raises(ValueError, match="single and/or batched"):
        params_from(Options, parser.parse_args(["--model", "m", "--engines", "both"]))
