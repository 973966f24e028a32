"""What every result file records about its run: command, git revision, machine, date."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

REPO_ROOT = Path(__file__).resolve().parent.parent


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "loadavg_start": list(os.getloadavg()),
    }


def git_revision() -> dict[str, str | bool]:
    """HEAD, and whether router/, worker/ or benchmarks/ differ from it (then the figures are
    for "uncommitted" code)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = bool(
            git(
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "router",
                "worker",
                "benchmarks",
            )
        )
    except (OSError, subprocess.SubprocessError):
        return {"revision": "unknown", "head": "unknown", "dirty": True}
    return {"revision": "uncommitted" if dirty else head, "head": head, "dirty": dirty}


def run_metadata(command: Sequence[str], smoke: bool = False) -> dict[str, Any]:
    """Call at the start of a run; add `machine.loadavg_end` with `finish` at its end."""
    git = git_revision()
    return {
        "command": shlex.join(command),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git,
        "git_revision": git["revision"],
        "machine": machine_info(),
        "smoke": smoke,
    }


def finish(metadata: dict[str, Any]) -> dict[str, Any]:
    metadata["machine"]["loadavg_end"] = list(os.getloadavg())
    metadata["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return metadata


def revision_text(metadata: dict[str, Any]) -> str:
    git = metadata["git"]
    head = str(git["head"])[:12]
    return head + (" + uncommitted changes" if git["dirty"] else "")
