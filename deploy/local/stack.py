"""The one-command local stack: Redis, workers, router replicas, nginx and Prometheus on 127.0.0.1.

    python -m deploy.local.stack up [--stack FILE] [--run-dir DIR]
    python -m deploy.local.stack status [--run-dir DIR]
    python -m deploy.local.stack down [--run-dir DIR]

(`deploy/local/stack.sh` runs the install step first, then this.) Everything lives under the run
directory (default run/): stack.json (the manifest: what was started, its PID, port and command),
NAME.pid files, logs/, and the private nginx and Prometheus configurations and data.

`up` starts, in order, waiting for each group to answer before the next:
    redis-server → workers (load the model, register) → routers (see every worker)
    → nginx → Redis exporter → Prometheus (every target scraped once)
and on any failure stops what it started and prints the failing log's tail.

`down` stops, by recorded PID (checked against the recorded command, so a reused PID is never
signalled), in this order:
    nginx (no new requests) → routers (in-flight requests finish, bounded)
    → workers (drain and deregister) → Prometheus, Redis exporter → redis-server
and then deletes the secrets.

Redis runs with one ACL user per role (deploy/redis/acl.py) and its default user off; `up` makes
fresh passwords and a worker secret every time (deploy.local.secrets). Routers and workers serve
/metrics on their own ports only, which is what Prometheus scrapes; nginx answers 404 for it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.processes import (
    http_json,
    http_status,
    router_sees,
    spawn,
    wait_until,
)
from deploy.local.processes import (
    MANIFEST,
    Service,
    StackFailure,
    alive,
    log_tail,
    plan,
    port_in_use,
    read_manifest,
    write_manifest,
)
from deploy.local.render import nginx_conf, prometheus_yml
from deploy.local.secrets import StackSecrets
from deploy.local.spec import StackError, StackSpec, load_stack
from router.demo import example_body, example_messages

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_STACK = REPO / "deploy" / "local" / "stack.toml"
DEFAULT_RUN_DIR = REPO / "run"

# Start order; `down` goes through the roles in STOP_ORDER.
ROLES = ("redis", "worker", "router", "nginx", "redis-exporter", "prometheus")
STOP_ORDER = ("nginx", "router", "worker", "prometheus", "redis-exporter", "redis")
# How long a role gets after its stop signal before SIGKILL: routers let in-flight requests
# finish (router shutdown_timeout_s is 30 s) and workers drain (drain_timeout_s is 30 s).
STOP_GRACE_S = {"router": 35.0, "worker": 35.0}
STOP_SIGNAL = {"nginx": signal.SIGQUIT}  # nginx: graceful; everything else takes SIGTERM

WORKER_LOAD_TIMEOUT_S = 180.0
START_TIMEOUT_S = 30.0


# -- up ---------------------------------------------------------------------------------------


def up(spec: StackSpec, run_dir: Path, stack_file: Path) -> None:
    running = [s for s in read_manifest(run_dir) if alive(s)]
    if running:
        print(f"the stack in {run_dir} is already running; `down` first to restart it")
        return
    services = plan(spec, run_dir)
    busy = [f"{name} ({port})" for name, port in spec.ports().items() if port_in_use(port)]
    if busy:
        raise StackFailure("ports already in use: " + ", ".join(busy))
    for folder in ("logs", "redis", "nginx/tmp", "prometheus/data"):
        (run_dir / folder).mkdir(parents=True, exist_ok=True)
    (run_dir / "nginx" / "nginx.conf").write_text(nginx_conf(spec, run_dir))
    (run_dir / "prometheus" / "prometheus.yml").write_text(prometheus_yml(spec))
    secrets = StackSecrets.create(run_dir, spec)

    started: list[Service] = []
    try:
        for role in ROLES:
            group = [s for s in services if s.role == role]
            for service in group:
                start(service, run_dir, secrets.env(service.role, spec.redis_url))
                started.append(service)
                write_manifest(run_dir, stack_file, started)
            if role != "worker":  # workers load while the routers start
                _wait_group(run_dir, started, role, spec, secrets)
            if role == "redis":
                _demo_tenant(spec, run_dir, secrets)
            if role == "router":
                _wait_group(run_dir, started, "worker", spec, secrets)
                _wait_group(run_dir, started, "router", spec, secrets)
    except BaseException:
        print("stopping what was started", file=sys.stderr)
        down(run_dir, quiet=True)
        raise
    _print_summary(spec, run_dir)


def _demo_tenant(spec: StackSpec, run_dir: Path, secrets: StackSecrets) -> None:
    """A demo project, endpoint `chat` serving the first model, and a key, in run/demo.env.

    `router admin demo` does the work (and reuses what still exists), as the admin Redis user;
    its output, which holds the key, is kept out of the log: `up` prints the key once in its
    summary.
    """
    prefix = ["--redis-prefix", spec.redis_prefix] if spec.redis_prefix else []
    subprocess.run(
        [
            sys.executable,
            "-m",
            "router",
            "admin",
            *prefix,
            "--json",
            "demo",
            "--model",
            spec.models[0].id,
            "--env-file",
            str(run_dir / "demo.env"),
            "--router-url",
            f"http://127.0.0.1:{spec.nginx_port}",
            "--base-domain",
            "api.localtest",
        ],
        check=True,
        capture_output=True,
        timeout=60,
        env={**os.environ, **secrets.env("admin", spec.redis_url)},
    )


def start(service: Service, run_dir: Path, secret_env: dict[str, str]) -> None:
    """Start one service; `secret_env` reaches its environment but not the manifest."""
    proc = spawn(service.argv, run_dir / service.log_name, {**service.env, **secret_env})
    # The process runs on after this command exits; `down` ends it by the recorded PID.
    proc.returncode = 0  # keeps Popen.__del__ from warning about a child it cannot reap
    service.pid = proc.pid
    (run_dir / f"{service.name}.pid").write_text(f"{proc.pid}\n")


def _wait_group(
    run_dir: Path, started: list[Service], role: str, spec: StackSpec, secrets: StackSecrets
) -> None:
    checks: dict[str, Callable[[Service], bool]] = {
        "redis": lambda s: secrets.ping(s.port),
        "worker": lambda s: http_status(s.url + "/health") == 200,
        "router": lambda s: router_sees(s.url, spec.total_workers()),
        "nginx": lambda s: http_status(s.url + "/health") == 200,
        "redis-exporter": lambda s: http_status(s.url + "/metrics") == 200,
        "prometheus": lambda s: http_status(s.url + "/-/ready") == 200,
    }
    timeout_s = WORKER_LOAD_TIMEOUT_S if role == "worker" else START_TIMEOUT_S
    for service in (s for s in started if s.role == role):
        wait_ready(service, run_dir, checks[role], timeout_s)
    if role == "prometheus":
        prom = next(s for s in started if s.role == "prometheus")
        # The first scrape of every target: up to one interval plus the scrape itself.
        deadline = time.monotonic() + 2 * spec.scrape_interval_s + 10
        while time.monotonic() < deadline and not _all_targets_up(prom.url):
            time.sleep(0.25)


def _all_targets_up(prometheus_url: str) -> bool:
    try:
        body = http_json(prometheus_url + "/api/v1/targets?state=active", 2.0)[1]
    except (OSError, ValueError):
        return False
    if not isinstance(body, dict):
        return False
    targets = body.get("data", {}).get("activeTargets", [])
    return bool(targets) and all(t.get("health") == "up" for t in targets)


def wait_ready(
    service: Service, run_dir: Path, check: Callable[[Service], bool], timeout_s: float
) -> None:
    def ready() -> bool:
        if not alive(service):
            raise StackFailure(f"{service.name} exited:\n{log_tail(run_dir, service)}")
        return check(service)

    try:
        wait_until(ready, timeout_s, service.name, interval_s=0.2)
    except TimeoutError:
        raise StackFailure(
            f"{service.name} not ready after {timeout_s:g} s:\n{log_tail(run_dir, service)}"
        ) from None


def _print_summary(spec: StackSpec, run_dir: Path) -> None:
    model = spec.models[0].id
    base = f"http://127.0.0.1:{spec.nginx_port}/v1"
    demo = dict(
        line.split("=", 1) for line in (run_dir / "demo.env").read_text().splitlines() if line
    )
    project, key = demo["DEMO_PROJECT"], demo["DEMO_KEY"]
    path_base = f"http://127.0.0.1:{spec.nginx_port}/{project}/chat/v1"
    admin = StackSecrets.paths(run_dir).admin_env_file
    prefix = f" --redis-prefix {spec.redis_prefix}" if spec.redis_prefix else ""
    print(
        f"""Stack is up: {base} (nginx → {spec.router_replicas} router(s) → \
{spec.total_workers()} worker(s)); Prometheus http://127.0.0.1:{spec.prometheus_port}; \
logs in {run_dir}/logs.
Demo project {project}, endpoint "chat", API key (also in {run_dir}/demo.env; shown once):
  {key}
  curl -s {base}/chat/completions -H "Authorization: Bearer {key}" \\
    -H 'Content-Type: application/json' \\
    -d {example_body(model)}
  python3 -c 'import openai; \
c = openai.OpenAI(base_url="{path_base}", api_key="{key}"); \
print(c.chat.completions.create(model="{model}", temperature=0, \
messages={example_messages()}).choices[0].message.content)'
  DNS-based: base_url http://chat.{project.lower()}.api.localtest:{spec.nginx_port}/v1
Admin (Redis user admin): env $(cat {admin}) python3 -m router admin{prefix} project list
Status: deploy/local/stack.sh status    Stop: deploy/local/stack.sh down"""
    )


# -- status -----------------------------------------------------------------------------------


def status(run_dir: Path) -> int:
    """Print what runs and where; 0 if everything recorded runs (or nothing was started)."""
    services = read_manifest(run_dir)
    if not services:
        print(f"nothing started (no {run_dir / MANIFEST})")
        return 0
    width = max(len(s.name) for s in services)
    stopped = 0
    for service in services:
        if alive(service):
            health = _health(service, run_dir)
            print(f"{service.name:<{width}}  running  pid {service.pid:<7} {service.url}  {health}")
        else:
            stopped += 1
            print(f"{service.name:<{width}}  stopped  (was pid {service.pid}; see {_log(service)})")
    nginx = next((s for s in services if s.role == "nginx"), None)
    if nginx is not None:
        print(f"endpoint: {nginx.url}/v1")
    return 1 if stopped else 0


def _health(service: Service, run_dir: Path) -> str:
    paths = {
        "worker": "/health",
        "router": "/health",
        "nginx": "/health",
        "prometheus": "/-/healthy",
        "redis-exporter": "/metrics",
    }
    try:
        if service.role == "redis":
            secrets = StackSecrets.load(run_dir)
            return "PONG" if secrets is not None and secrets.ping(service.port) else "no PONG"
        code = http_status(service.url + paths[service.role])
    except OSError as exc:
        return f"unreachable ({exc})"
    if code == 200 and service.role == "router":
        try:
            body = http_json(service.url + "/health", 2.0)[1]
        except (OSError, ValueError):
            body = None
        if isinstance(body, dict):
            return f"healthy, sees {body.get('workers')} worker(s)"
    return "healthy" if code == 200 else f"HTTP {code}"


def _log(service: Service) -> str:
    return service.log_name


# -- down -------------------------------------------------------------------------------------


def down(run_dir: Path, *, quiet: bool = False) -> None:
    services = read_manifest(run_dir)
    if not services and not quiet:
        print("nothing to stop")
    for role in STOP_ORDER:
        group = [s for s in services if s.role == role and alive(s)]
        sig = STOP_SIGNAL.get(role, signal.SIGTERM)
        for service in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, sig)
        deadline = time.monotonic() + STOP_GRACE_S.get(role, 10.0)
        for service in group:
            while alive(service) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(service):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(service.pid, signal.SIGKILL)
                print(f"killed {service.name} (no exit after its stop signal)")
            elif not quiet:
                print(f"stopped {service.name}")
    for service in services:
        (run_dir / f"{service.name}.pid").unlink(missing_ok=True)
    (run_dir / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(StackSecrets.paths(run_dir).folder, ignore_errors=True)


# -- CLI --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/local/stack.sh", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=("up", "status", "down"))
    parser.add_argument(
        "--stack",
        type=Path,
        default=Path(os.environ.get("STACK_FILE") or DEFAULT_STACK),
        help="stack file (env STACK_FILE; default deploy/local/stack.toml)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(os.environ.get("RUN_DIR") or DEFAULT_RUN_DIR),
        help="where PIDs, logs, configs and data go (env RUN_DIR; default run/)",
    )
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir.resolve()
    try:
        if args.command == "up":
            spec = load_stack(args.stack)
            run_dir.mkdir(parents=True, exist_ok=True)
            up(spec, run_dir, args.stack.resolve())
            return 0
        if args.command == "status":
            return status(run_dir)
        down(run_dir)
        return 0
    except (StackError, StackFailure) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
