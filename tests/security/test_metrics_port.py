"""Metrics name every project and endpoint, so they never leave through the public listener:
a router with `--metrics-port` serves /metrics there only (404 on its main port; /health on
both), and nginx, with the local stack's rendered configuration in front of a router that still
serves /metrics on its main port, answers 404 for every spelling of /metrics while /health and
/v1/models pass through."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.processes import Process, free_port, http_status, wait_until
from deploy.local.render import nginx_conf
from deploy.local.spec import parse_stack
from router.config import parse_config
from tests.deploy.tools import need
from tests.processes import RedisServer, router_process

from .services import running, scrape

# What a client might send to reach the metrics: nginx normalises the path before matching.
METRICS_PATHS = ("/metrics", "/metrics/", "/metrics?format=text", "//metrics", "/%6Detrics")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer.create(tmp_path_factory.mktemp("metrics-redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def get(port: int, path: str) -> int:
    """The status of GET `path`, sent exactly as written (urllib would re-quote it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_a_router_with_a_metrics_port_serves_metrics_there_only(
    redis_url: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    router = router_process(tmp_path, redis_url, extra=("--metrics-port", str(metrics_port)))
    with running(router):
        assert get(router.port, "/metrics") == 404
        assert get(router.port, "/health") == 200
        assert get(metrics_port, "/health") == 200
        text = scrape(f"http://127.0.0.1:{metrics_port}")
        assert "router_requests_total" in text or "router_registry_workers" in text
        assert get(metrics_port, "/v1/models") == 404  # the metrics port serves nothing else


def test_without_a_metrics_port_metrics_stay_on_the_main_port(
    redis_url: str, tmp_path: Path
) -> None:
    router = router_process(tmp_path, redis_url)
    with running(router):
        assert "router_" in scrape(router.url)


def test_the_metrics_port_must_differ_from_the_port() -> None:
    base = ["--redis-url", "redis://127.0.0.1:6379/0", "--port", "8080"]
    assert parse_config([*base, "--metrics-port", "9180"], {}).metrics_port == 9180
    assert parse_config(base, {}).metrics_port is None
    with pytest.raises(SystemExit):
        parse_config([*base, "--metrics-port", "8080"], {})


def test_nginx_answers_404_for_metrics_whatever_the_router_does(
    redis_url: str, tmp_path: Path
) -> None:
    """The local stack's nginx config (compose includes the same proxy.conf)."""
    nginx = need("nginx")
    router = router_process(tmp_path, redis_url)  # /metrics on its main port: nginx must hide it
    nginx_port = free_port()
    spec = parse_stack(
        {
            "router": {"replicas": 1, "base_port": router.port, "metrics_base_port": free_port()},
            "nginx": {"port": nginx_port},
            "models": [{"id": "m", "engine": "fake", "base_port": free_port()}],
        }
    )
    for folder in ("logs", "nginx/tmp"):
        (tmp_path / folder).mkdir(parents=True)
    conf = tmp_path / "nginx" / "nginx.conf"
    conf.write_text(nginx_conf(spec, tmp_path))
    argv = [nginx, "-p", str(tmp_path / "nginx"), "-c", str(conf)]
    argv += ["-e", str(tmp_path / "logs" / "nginx-error.log"), "-g", "daemon off;"]
    proxy = Process("nginx", argv, tmp_path / "nginx.log", nginx_port)
    with running(router):
        proxy.start()
        try:
            wait_until(lambda: http_status(proxy.url + "/health") == 200, 10, "nginx")
            assert get(router.port, "/metrics") == 200  # the router itself would answer
            for path in METRICS_PATHS:
                assert get(nginx_port, path) == 404, path
            assert get(nginx_port, "/health") == 200
            assert get(nginx_port, "/v1/models") == 200
        finally:
            proxy.stop()
