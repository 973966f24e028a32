"""The local stack's processes: their command lines (`plan`) and the manifest that records them.

Redis, worker and router command lines are benchmarks.processes' (shared with the tests and the
benchmarks); what is local is the rest of the stack and the detached lifecycle: a manifest, PID
files, and a liveness check that a recorded PID still runs the recorded program.

Secrets (deploy.local.secrets) never reach a command line or the manifest: Redis URLs with their
passwords go in each process's environment, the worker secret in a file named by a flag.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.processes import redis_argv, router_argv, worker_argv
from deploy.local.secrets import StackSecrets
from deploy.local.spec import StackSpec

MANIFEST = "stack.json"


class StackFailure(RuntimeError):
    pass


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


def plan(spec: StackSpec, run_dir: Path, python: str = sys.executable) -> list[Service]:
    """Every process of the stack in start order, with its exact command line."""
    secrets = StackSecrets.paths(run_dir)
    redis = redis_argv(spec.redis_port, server=_need("redis-server"), data_dir=run_dir / "redis",
                       options=["--aclfile", str(secrets.acl_file)])  # fmt: skip
    services = [Service("redis", "redis", redis, spec.redis_port, spec.redis_url)]
    shared = ["--worker-secret-file", str(secrets.worker_secret_file)]
    if spec.redis_prefix:
        shared += ["--redis-prefix", spec.redis_prefix]
    for model in spec.models:
        workers = zip(model.worker_ids(), model.worker_ports(), model.worker_metrics_ports(),
                      strict=True)  # fmt: skip
        for worker_id, port, metrics_port in workers:
            options = ["--n-gpu-layers", str(model.n_gpu_layers), *shared]
            options += ["--metrics-port", str(metrics_port)]
            if model.path is not None:
                options += ["--model-path", model.path]
            argv = worker_argv(port, spec.redis_url, model.id, engine=model.engine,
                               worker_id=worker_id, options=[*options, *model.args],
                               python=python)  # fmt: skip
            argv = _without_redis_url(argv)
            services.append(Service(f"worker-{worker_id}", "worker", argv, port, _url(port)))
    ports = zip(spec.router_ports(), spec.router_metrics_ports(), strict=True)
    for i, (port, metrics_port) in enumerate(ports, start=1):
        options = [*shared, "--metrics-port", str(metrics_port), *spec.router_args]
        # auth=None: the router's default (keys checked), as in production
        argv = router_argv(port, spec.redis_url, auth=None, options=options, python=python)
        argv = _without_redis_url(argv)
        services.append(
            Service(f"router-{i}", "router", argv, port, _url(port), dict(spec.router_env))
        )
    return services + _edge_services(spec, run_dir)


def _without_redis_url(argv: list[str]) -> list[str]:
    """argv less `--redis-url URL`: the URL carries a password, so it comes from REDIS_URL."""
    i = argv.index("--redis-url")
    return argv[:i] + argv[i + 2 :]


def _edge_services(spec: StackSpec, run_dir: Path) -> list[Service]:
    """nginx in front, the Redis exporter and Prometheus beside."""
    nginx_dir, prom_dir = run_dir / "nginx", run_dir / "prometheus"
    nginx = [
        _need("nginx"),
        *("-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf")),
        *("-e", str(run_dir / "logs" / "nginx-error.log"), "-g", "daemon off;"),
    ]
    services = [Service("nginx", "nginx", nginx, spec.nginx_port, _url(spec.nginx_port))]
    if spec.redis_exporter_port:
        exporter = [
            _need("prometheus-redis-exporter"),
            f"-redis.addr=redis://127.0.0.1:{spec.redis_port}",
            "-redis.user=exporter",  # its password comes from REDIS_PASSWORD
            f"-web.listen-address=127.0.0.1:{spec.redis_exporter_port}",
        ]
        port = spec.redis_exporter_port
        services.append(Service("redis-exporter", "redis-exporter", exporter, port, _url(port)))
    prometheus = [
        _need("prometheus"),
        f"--config.file={prom_dir / 'prometheus.yml'}",
        f"--storage.tsdb.path={prom_dir / 'data'}",
        "--storage.tsdb.retention.time=2d",
        f"--web.listen-address=127.0.0.1:{spec.prometheus_port}",
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]
    port = spec.prometheus_port
    services.append(Service("prometheus", "prometheus", prometheus, port, _url(port)))
    return services


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _need(program: str) -> str:
    path = binary(program)
    if path is None:
        raise StackFailure(f"{program} is not installed (deploy/install.sh installs it)")
    return path


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
