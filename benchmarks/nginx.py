"""nginx as a reverse proxy for benchmarks: round robin over router replicas, or in front of one
upstream.

`nginx_service(upstreams)` writes a minimal configuration into a temporary folder (keep-alive
pool to the upstreams, HTTP/1.1, no buffering so SSE streams pass through as they come) for one
nginx process (no master, so the PID that is measured or stopped is the one that works) in the
foreground on a free 127.0.0.1 port. benchmarks.router_overhead puts it in front of its mock.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.processes import HOST, HttpService, free_port

NGINX = "/usr/sbin/nginx"

_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream routers {{
{servers}
        keepalive 256;
    }}
    server {{
        listen {host}:{port} backlog=4096;
        location / {{
            proxy_pass http://routers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def available() -> bool:
    return shutil.which(NGINX) is not None


def config_text(directory: Path, port: int, upstreams: Sequence[str]) -> str:
    servers = "\n".join(f"        server {urlsplit(u).netloc};" for u in upstreams)
    return _CONF.format(dir=directory, host=HOST, port=port, servers=servers)


def nginx_service(upstreams: Sequence[str], directory: Path | None = None) -> HttpService:
    """An HttpService (not started) for nginx over `upstreams` (base URLs)."""
    folder = Path(directory or tempfile.mkdtemp(prefix="bench-nginx-"))
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(config_text(folder, port, upstreams))
    argv = [NGINX, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")]
    return HttpService("nginx", argv, folder / "nginx.out", port)
