"""`python -m benchmarks [serve]`: benchmark any OpenAI-compatible chat endpoint.

    python -m benchmarks --base-url http://127.0.0.1:8080/v1 --model M \\
        --request-rate 2,4,8 --duration-s 60 --input-len uniform:50,150 --output-len 64 \\
        --slo ttft_ms=500 --slo tpot_ms=50 --out results --name my-run

Targets the router, a worker directly, or anything else that speaks `POST /chat/completions`
(path-based base URLs such as `http://host/proj_ABC/my-endpoint/v1` too). Load is closed-loop
(`--concurrency`) or open-loop (`--request-rate`, gamma inter-arrivals with `--burstiness`);
several comma-separated values make a sweep. See benchmarks/README.md for every metric's
definition and the output files.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks import report
from benchmarks.client import Target, chat_url
from benchmarks.flags import int_list
from benchmarks.loadgen import run_in_new_loop
from benchmarks.meta import finish, run_metadata
from benchmarks.metrics import DEFAULT_PERCENTILES, Slo
from benchmarks.runner import LevelResult, Load, Runner
from benchmarks.workload import (
    LengthDist,
    SyntheticWorkload,
    Workload,
    load_jsonl,
)

logger = logging.getLogger(__name__)

DEFAULT_INPUT_LEN = "fixed:64"
DEFAULT_OUTPUT_LEN = "fixed:64"
DEFAULT_NUM_REQUESTS = 100


@dataclass(frozen=True, slots=True)
class Outputs:
    out_dir: Path
    name: str
    plots: bool = True

    def path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.name}{suffix}"


async def run_levels(
    target: Target, workload: Workload, loads: Sequence[Load], progress: bool
) -> list[LevelResult]:
    """Each load in turn on one client session."""
    results: list[LevelResult] = []
    async with Runner(target, workload, progress) as runner:
        for load in loads:
            logger.info("level: %s", load.label)
            results.append(await runner.run(load))
    return results


def summaries(
    results: Sequence[LevelResult], slo: Slo, percentiles: Sequence[float]
) -> list[dict[str, Any]]:
    return [r.summary(slo, percentiles) for r in results]


def write_outputs(
    outputs: Outputs,
    metadata: dict[str, Any],
    config: dict[str, Any],
    results: Sequence[LevelResult],
    runs: Sequence[dict[str, Any]],
    plot_title: str,
) -> list[Path]:
    """All the files of one run (see benchmarks.report); returns their paths."""
    outputs.out_dir.mkdir(parents=True, exist_ok=True)
    written = [outputs.path(".json"), outputs.path(".requests.jsonl"), outputs.path(".csv")]
    report.write_summary(written[0], metadata, config, list(runs))
    report.write_requests(written[1], ((r.load.label, r.records) for r in results))
    written[2].write_text(report.csv_text(runs))
    if outputs.plots and runs:
        x_key = "concurrency" if results[0].load.closed else "request_rate"
        series = [report.Series(outputs.name, runs, x_key)]
        written += report.plot(outputs.out_dir / outputs.name, series, plot_title)
    return written


def console_table(runs: Sequence[dict[str, Any]]) -> str:
    """A short human summary, one block per level."""
    lines: list[str] = []
    for run in runs:
        lines += [
            f"== {run['label']} ==",
            f"  completed {run['completed']}/{run['num_requests']} in {run['duration']:.2f} s; "
            f"errors: {report.fmt_errors(run['errors'])}",
            f"  requests/s {run['request_throughput']:.2f}, output tokens/s "
            f"{run['output_throughput']:.1f}, tokens in/out {run['total_input_tokens']}/"
            f"{run['total_output_tokens']} (usage reported by {run['usage_reported']})",
        ]
        if "request_goodput" in run:
            lines.append(
                f"  goodput {run['request_goodput']:.2f} req/s ({run['good_requests']} met "
                f"{run['slo']})"
            )
        for metric, title in (*report.LATENCY_PANELS, ("ttfb", "TTFB")):
            lines.append(
                f"  {title:5s} ms: mean {report.fmt_ms(run[f'mean_{metric}_ms'])}  "
                f"p50 {report.fmt_ms(run.get(f'p50_{metric}_ms'))}  "
                f"p90 {report.fmt_ms(run.get(f'p90_{metric}_ms'))}  "
                f"p99 {report.fmt_ms(run.get(f'p99_{metric}_ms'))}  "
                f"max {report.fmt_ms(run[f'max_{metric}_ms'])}"
            )
        if "max_send_lag_ms" in run:
            lines.append(
                f"  client send lag ms: p99 {report.fmt_ms(run['p99_send_lag_ms'])}, max "
                f"{report.fmt_ms(run['max_send_lag_ms'])} (behind the arrival schedule)"
            )
    return "\n".join(lines) + "\n"


# --- CLI --------------------------------------------------------------------------------------


def _rates(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers or inf, got {text!r}") from None
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected rates > 0 (or inf), got {text!r}")
    return values


def _length(text: str) -> LengthDist:
    try:
        return LengthDist.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _percentiles(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers, got {text!r}") from None
    if not values or not all(0 <= v <= 100 for v in values):
        raise argparse.ArgumentTypeError(f"expected percentiles in [0, 100], got {text!r}")
    return values


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def _extra_body(text: str) -> dict[str, Any]:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return data


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark an OpenAI-compatible chat endpoint (see benchmarks/README.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _target_flags(p)
    _load_flags(p)
    _request_flags(p)
    _output_flags(p)
    return p


def _target_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target")
    g.add_argument(
        "--base-url",
        action="append",
        required=True,
        help="OpenAI base URL, e.g. http://127.0.0.1:8080/v1 or .../proj_ABC/my-endpoint/v1 "
        "(a bare http://host:port gets /v1); repeat to spread requests round-robin",
    )
    g.add_argument("--model", help="model id; default: the first of GET {base-url}/models")
    g.add_argument("--api-key", help="Bearer key; default: $OPENAI_API_KEY if set")
    g.add_argument("--header", action="append", type=_header, default=[], help="NAME:VALUE")
    g.add_argument("--timeout-s", type=float, default=300.0, help="per request, in total")


def _load_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load (closed loop: --concurrency; open loop: --request-rate)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--concurrency", type=int_list, help="e.g. 1,2,4,8 (a sweep)")
    mode.add_argument("--request-rate", type=_rates, help="requests/s, e.g. 1,2,4 or inf")
    g.add_argument("--burstiness", type=float, default=1.0, help="gamma shape; 1 = Poisson")
    g.add_argument("--max-concurrency", type=int, help="open loop: cap on requests in flight")
    g.add_argument("--num-requests", type=int, help=f"per level (default {DEFAULT_NUM_REQUESTS})")
    g.add_argument("--duration-s", type=float, help="per level; with --num-requests, first wins")
    g.add_argument("--warmup-requests", type=int, default=0, help="per level, not recorded")
    g.add_argument("--seed", type=int, default=0, help="prompts, lengths and arrivals")


def _request_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("requests")
    g.add_argument(
        "--input-len",
        type=_length,
        default=None,
        help=f"prompt words: N, uniform:LO,HI or normal:MEAN,STD (default {DEFAULT_INPUT_LEN})",
    )
    g.add_argument(
        "--output-len",
        type=_length,
        default=None,
        help=f"max_tokens, same forms (default {DEFAULT_OUTPUT_LEN}; with --dataset: the file's)",
    )
    g.add_argument("--dataset", type=Path, help="JSONL of conversations instead of synthetic")
    g.add_argument("--system-prompt", help="synthetic: a system message before each prompt")
    g.add_argument("--no-stream", action="store_true", help="plain JSON answers (no TTFT/ITL)")
    g.add_argument(
        "--no-usage", action="store_true", help="do not send stream_options.include_usage"
    )
    g.add_argument(
        "--extra-body", type=_extra_body, default={}, help='JSON merged in, e.g. {"temperature":0}'
    )


def _output_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("figures and output")
    g.add_argument(
        "--slo",
        action="append",
        default=[],
        help="goodput objective KEY=MS, KEY one of ttft_ms, tpot_ms, e2e_ms; repeatable",
    )
    g.add_argument("--percentiles", type=_percentiles, default=DEFAULT_PERCENTILES)
    g.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")
    g.add_argument("--name", help="file name prefix (default: bench-DATE-TIME)")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (also off "
                   "when stderr is not a terminal)")  # fmt: skip
    g.add_argument("--smoke", action="store_true", help="mark the results as a smoke run")
    g.add_argument("-v", "--verbose", action="store_true")


def loads_from_args(args: argparse.Namespace) -> list[Load]:
    num = args.num_requests
    if num is None and args.duration_s is None:
        num = DEFAULT_NUM_REQUESTS
    common: dict[str, Any] = {
        "num_requests": num,
        "duration_s": args.duration_s,
        "warmup_requests": args.warmup_requests,
        "seed": args.seed,
    }
    if args.request_rate is not None:
        return [
            Load(
                request_rate=rate,
                burstiness=args.burstiness,
                max_concurrency=args.max_concurrency,
                **common,
            )
            for rate in args.request_rate
        ]
    if args.max_concurrency is not None:
        raise ValueError("--max-concurrency applies to --request-rate runs only")
    return [Load(concurrency=c, **common) for c in (args.concurrency or (1,))]


def workload_from_args(args: argparse.Namespace) -> Workload:
    if args.dataset is not None:
        if args.input_len is not None or args.system_prompt is not None:
            raise ValueError("--input-len and --system-prompt are for synthetic prompts only")
        return load_jsonl(args.dataset, args.seed, args.output_len)
    return SyntheticWorkload(
        input_len=args.input_len or LengthDist.parse(DEFAULT_INPUT_LEN),
        output_len=args.output_len or LengthDist.parse(DEFAULT_OUTPUT_LEN),
        seed=args.seed,
        system_prompt=args.system_prompt,
    )


async def discover_model(base_url: str, headers: dict[str, str], timeout_s: float) -> str:
    """The first model the server lists at GET {base}/models."""
    url = chat_url(base_url).removesuffix("/chat/completions") + "/models"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as resp,
    ):
        body = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url} -> {resp.status}: {body[:300]!r}; give --model")
    data = orjson.loads(body).get("data") or []
    if not data or not isinstance(data[0], dict) or not data[0].get("id"):
        raise RuntimeError(f"GET {url} lists no model; give --model")
    return str(data[0]["id"])


async def _main(
    args: argparse.Namespace,
    command: Sequence[str],
    workload: Workload,
    loads: Sequence[Load],
    slo: Slo,
) -> int:
    api_key = args.api_key or os.environ.get("OPENAI_API_KEY") or None
    headers = tuple(args.header)
    model = args.model
    if model is None:
        probe = Target(tuple(args.base_url), "probe", api_key, headers)
        model = await discover_model(args.base_url[0], probe.request_headers(), 30.0)
        logger.info("model: %s (from GET /models)", model)
    target = Target(
        base_urls=tuple(args.base_url),
        model=model,
        api_key=api_key,
        headers=headers,
        stream=not args.no_stream,
        include_usage=not args.no_usage,
        extra_body=tuple(args.extra_body.items()),
        timeout_s=args.timeout_s,
    )
    metadata = await asyncio.to_thread(run_metadata, command, args.smoke)  # runs git
    config = {
        "target": target.describe(),
        "workload": workload.describe(),
        "levels": [load.describe() for load in loads],
        "slo": slo.to_json(),
        "percentiles": list(args.percentiles),
    }
    results = await run_levels(target, workload, loads, not args.no_progress)
    runs = summaries(results, slo, args.percentiles)
    name = args.name or datetime.now().strftime("bench-%Y%m%d-%H%M%S")
    outputs = Outputs(args.out, name, plots=not args.no_plots)
    written = await asyncio.to_thread(
        write_outputs, outputs, finish(metadata), config, results, runs, name
    )
    sys.stdout.write(console_table(runs))
    sys.stdout.write("wrote " + ", ".join(str(p) for p in written) + "\n")
    return 0 if all(run["completed"] > 0 for run in runs) else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    if args.burstiness <= 0 or not math.isfinite(args.burstiness):
        parser.error("--burstiness must be a finite number > 0")
    try:
        slo = Slo.parse(args.slo)
        loads = loads_from_args(args)
        workload = workload_from_args(args)  # DatasetError is a ValueError
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    command = ["python", "-m", "benchmarks", *argv]
    try:
        return run_in_new_loop(_main(args, command, workload, loads, slo))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; nothing written\n")
        return 130
    except RuntimeError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
