"""nginx as a round-robin reverse proxy in front of router replicas, for benchmarks.

`Nginx(upstreams)` writes a minimal configuration into a temporary folder (keep-alive pool to
the upstreams, HTTP/1.1, no buffering so SSE streams pass through as they come), starts
`nginx -p DIR -c nginx.conf` in the foreground on a free 127.0.0.1 port and stops it by PID.
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
