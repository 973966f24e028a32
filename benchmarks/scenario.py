"""What the scenario scripts share: their CLIs, stack-side figures, result files.

A scenario starts its own stack (benchmarks.stack), drives it with the harness
(benchmarks.runner), and writes `benchmarks/results/NAME.json` (metadata: command, git
revision, machine, date, smoke or not; parameters; figures), `NAME.md` (the README table), and
for sweeps `NAME.csv` and `NAME.*.png`.

A scenario's command line comes from its parameter dataclass (benchmarks.flags).
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from benchmarks import report
from benchmarks.flags import RESULTS_DIR as RESULTS_DIR  # re-exported
from benchmarks.loadgen import run_in_new_loop
from benchmarks.meta import REPO_ROOT, finish

logger = logging.getLogger(__name__)

T = TypeVar("T")


def run_scenario(coro: Coroutine[Any, Any, T]) -> T | None:
    """`run_cancellable`; None, after saying so, when interrupted (nothing is written then)."""
    try:
        return run_cancellable(coro)
    except (asyncio.CancelledError, KeyboardInterrupt):
        sys.stderr.write("interrupted; the stack was stopped, nothing written\n")
        return None


def router_flags() -> str:
    """`python -m router --help`, to check that the router has a flag a scenario needs."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "router", "--help"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout


def run_cancellable(coro: Coroutine[Any, Any, T]) -> T:
    """Run in a fresh loop; SIGTERM (e.g. from `timeout`) cancels it like Ctrl-C does, so the
    stack's processes are still stopped by PID on the way out."""

    async def wrapper() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    return run_in_new_loop(wrapper())


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def prometheus_total(text: str, name: str) -> float:
    """The sum over all label sets of one metric in Prometheus text format (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1) == name:
            try:
                total += float(match.group(3))
            except ValueError:
                continue
    return total


async def scrape(url: str) -> str:
    """GET {url}/metrics; "" when it does not answer (the figure is then missing, not fatal)."""
    timeout = aiohttp.ClientTimeout(total=5.0)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url + "/metrics") as resp,
        ):
            return (await resp.text()) if resp.status == 200 else ""
    except (aiohttp.ClientError, TimeoutError) as exc:
        logger.warning("could not scrape %s/metrics: %r", url, exc)
        return ""


def write_report(
    out_dir: Path, name: str, report_data: dict[str, Any], markdown: str
) -> tuple[Path, Path]:
    """NAME.json and NAME.md; prints the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    finish(report_data["metadata"])
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    json_path.write_bytes(report.dumps(report_data))
    md_path.write_text(markdown)
    sys.stdout.write(markdown)
    sys.stdout.write(f"\nwrote {json_path} and {md_path}\n")
    return json_path, md_path


def header_line(metadata: Mapping[str, Any]) -> str:
    """Machine, date, revision and command, for under a table's title."""
    m = metadata["machine"]
    git = metadata["git"]
    revision = str(git["head"])[:12] + (" + uncommitted changes" if git["dirty"] else "")
    smoke = " **Smoke run: too short to quote.**" if metadata.get("smoke") else ""
    return (
        f"{m['cpu_model']}, {m['nproc']} CPUs; {metadata['date']}, revision {revision}. "
        f"Command: `{metadata['command']}`.{smoke}"
    )
