"""The local stack's processes as recorded in the manifest, and the probes that check them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "stack.json"


@dataclass(slots=True)
class Service:
    """One process of the stack, as recorded in the manifest."""

    name: str
    role: str
    argv: list[str]
    port: int
    url: str  # what status shows and health checks use
    env: dict[str, str] = field(default_factory=dict)
    pid: int = 0

    @property
    def log_name(self) -> str:
        return f"logs/{self.name}.log"


def binary(name: str) -> str | None:
    """A program on PATH or in the sbin directories a non-login root shell may lack."""
    found = shutil.which(name)
    if found is None:
        for folder in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return found


def alive(service: Service) -> bool:
    """The recorded PID still runs the recorded program (not a zombie, not a reused PID)."""
    if service.pid <= 0:
        return False
    proc = Path(f"/proc/{service.pid}")
    try:
        stat = (proc / "stat").read_text()
        exe = os.readlink(proc / "exe").removesuffix(" (deleted)")
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    if state in ("Z", "X"):
        return False
    # The executable, not the command line: nginx and redis-server rewrite their process titles.
    return os.path.realpath(exe) == os.path.realpath(service.argv[0])


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def http_status(url: str, timeout_s: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            resp.read()
            code: int = resp.status
            return code
    except urllib.error.HTTPError as exc:
        return exc.code


def http_json(url: str, timeout_s: float = 2.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def log_tail(run_dir: Path, service: Service, lines: int = 30) -> str:
    path = run_dir / service.log_name
    if not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in text)


def write_manifest(run_dir: Path, stack_file: Path, services: list[Service]) -> None:
    data = {"stack_file": str(stack_file), "services": [asdict(s) for s in services]}
    tmp = run_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(run_dir / MANIFEST)


def read_manifest(run_dir: Path) -> list[Service]:
    try:
        data = json.loads((run_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return []
    return [Service(**s) for s in data["services"]]
