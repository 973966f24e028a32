"""The local stack's nginx and Prometheus configurations, rendered from a StackSpec.

Both run as private instances: every path they write (pid, logs, temp files, TSDB) is under the
run directory, and they listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
from pathlib import Path

from deploy.local.spec import StackSpec

DEPLOY = Path(__file__).resolve().parent.parent
PROXY_CONF = DEPLOY / "nginx" / "proxy.conf"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"


def nginx_conf(spec: StackSpec, run_dir: Path) -> str:
    nginx_dir = run_dir / "nginx"
    logs = run_dir / "logs"
    servers = "\n".join(
        f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;"
        for port in spec.router_ports()
    )
    temp = "\n".join(
        f"    {kind}_temp_path {nginx_dir / 'tmp' / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""# Rendered by deploy/local/render.py for {run_dir}; the next `up` overwrites it.
worker_processes 1;
pid {nginx_dir / "nginx.pid"};
error_log {logs / "nginx-error.log"} warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log {logs / "nginx-access.log"};
{temp}
    # Bodies up to the router's limit stay in memory (no temp file per request).
    client_body_buffer_size 4m;

    upstream routers {{
        least_conn;
{servers}
        keepalive 64;
        keepalive_timeout 60s;
    }}

    server {{
        listen 127.0.0.1:{spec.nginx_port};
        include {PROXY_CONF};
    }}
}}
"""


def prometheus_yml(spec: StackSpec) -> str:
    """Scrape every router and worker on its metrics port (and the Redis exporter), with the
    alert rules loaded.

    Workers carry `worker` and `model` target labels and routers a `router` label, as the
    Kubernetes PodMonitor/ServiceMonitor relabelling gives them, so the dashboard and the alerts
    read the same series everywhere.
    """
    interval = f"{spec.scrape_interval_s:g}s"
    lines = [
        f"# Rendered by deploy/local/render.py; scrape interval {interval}.",
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
        f"  scrape_timeout: {min(spec.scrape_interval_s, 10):g}s",
        "rule_files:",
        f"  - {_q(str(ALERTS))}",
        "scrape_configs:",
        "  - job_name: router",
        "    static_configs:",
    ]
    for i, port in enumerate(spec.router_metrics_ports(), start=1):
        lines += [
            f"      - targets: [{_q(f'127.0.0.1:{port}')}]",
            f"        labels: {{router: {_q(f'router-{i}')}}}",
        ]
    lines += ["  - job_name: worker", "    static_configs:"]
    for model in spec.models:
        for worker_id, port in zip(model.worker_ids(), model.worker_metrics_ports(), strict=True):
            lines += [
                f"      - targets: [{_q(f'127.0.0.1:{port}')}]",
                f"        labels: {{worker: {_q(worker_id)}, model: {_q(model.id)}}}",
            ]
    if spec.redis_exporter_port:
        lines += [
            "  - job_name: redis",
            "    static_configs:",
            f"      - targets: [{_q(f'127.0.0.1:{spec.redis_exporter_port}')}]",
        ]
    lines += [
        "  - job_name: prometheus",
        "    static_configs:",
        f"      - targets: [{_q(f'127.0.0.1:{spec.prometheus_port}')}]",
    ]
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(text)
