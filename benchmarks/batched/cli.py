"""`python -m benchmarks.batched`: run each part in a process of its own, then write the report."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.batched.engines import run_bare, run_engine
from benchmarks.batched.params import Options
from benchmarks.batched.report import git_revision, machine_info, render_markdown, targets
from benchmarks.flags import params_from, scenario_parser
from worker.config import ConfigError, resolve_model_path

DESCRIPTION = "Continuous batching against one sequence at a time and against the bare loop."


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = scenario_parser(Options, "python -m benchmarks.batched", DESCRIPTION, extras=())
    args = parser.parse_args(argv)
    try:
        opts = params_from(Options, args)
        return replace(opts, model=resolve_model_path(opts.model))
    except (ValueError, ConfigError) as exc:
        parser.error(str(exc))


def run_part(opts: Options, part: str) -> list[dict[str, Any]]:
    if part == "bare":
        return [asdict(r) for r in run_bare(opts)]
    return [asdict(lv) for lv in asyncio.run(run_engine(opts, part))]


def in_subprocess(argv: list[str], part: str) -> list[dict[str, Any]]:
    """Each part in a process of its own, as each engine has in the worker: llama.cpp's OpenMP
    thread teams of several engines in one process slow each other down (libgomp stops spinning
    at its barriers once it has more threads than CPUs: 3x slower on 2 CPUs)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "part.json"
        args = [sys.executable, "-m", "benchmarks.batched", *argv, "--part", part]
        subprocess.run([*args, "--part-json", str(path)], check=True, timeout=3600)
        results: list[dict[str, Any]] = json.loads(path.read_text())
        return results


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(args)
    if opts.part is not None:
        assert opts.part_json is not None
        opts.part_json.write_text(json.dumps(run_part(opts, opts.part)))
        return 0
    command = shlex.join(["python", "-m", "benchmarks.batched", *args])
    machine = machine_info(opts.n_gpu_layers)
    started = time.monotonic()
    bare = in_subprocess(args, "bare") if opts.bare else None
    engine = {name: in_subprocess(args, name) for name in opts.engines}
    http = None
    if opts.http:
        from benchmarks.batched.over_http import run_http  # aiohttp: only for this part

        http = asyncio.run(run_http(opts))
    machine["loadavg_end"] = list(os.getloadavg())
    report: dict[str, Any] = {
        "scenario": "batched",
        "label": opts.label,
        "command": command,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_revision": opts.git_rev or git_revision(),
        "machine": machine,
        "parameters": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in asdict(opts).items()
            if k not in ("part", "part_json")
        },
        "engine": engine,
        "bare": bare,
        "http": (
            {name: [asdict(lv) for lv in levels] for name, levels in http.items()}
            if http is not None
            else None
        ),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    report["targets"] = targets(report)
    opts.out.mkdir(parents=True, exist_ok=True)
    stem = opts.out / f"batched_{opts.label}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
