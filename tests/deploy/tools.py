"""The external programs the deploy tests run, found the way deploy/local/stack.py finds them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from deploy.local.processes import binary

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def need(program: str) -> str:
    """The program's path, or skip: deploy/install.sh installs it (CI runs install.sh)."""
    path = binary(program)
    if path is None:
        pytest.skip(f"{program} is not installed; `bash deploy/install.sh` installs it")
    return path


def run(
    argv: list[str], cwd: Path = REPO, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )
