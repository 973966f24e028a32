"""deploy/docker and deploy/nginx, checked statically (no Docker engine here): the compose file
against the Compose Specification's schema, every file it or a Dockerfile references, hadolint
where installed, and both nginx configurations with `nginx -t`."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deploy.local.render import nginx_conf
from deploy.local.spec import load_stack
from tests.deploy.tools import DEPLOY, REPO, need, run

DOCKER = DEPLOY / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_compose_matches_the_compose_specification() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(compose())
    ]
    assert not errors, errors[:5]


def test_compose_services_and_profiles() -> None:
    services = compose()["services"]
    assert {"redis", "router", "nginx", "prometheus", "grafana"} <= set(services)
    workers = {name: s for name, s in services.items() if name.startswith("worker-")}
    profiles = {p for s in workers.values() for p in s["profiles"]}
    assert profiles == {"cpu", "gpu"}
    assert services["router"]["deploy"]["replicas"] >= 2
    for name, worker in workers.items():
        environment = worker["environment"]
        # The worker id names the series in Prometheus; the advertised URL is the service name.
        assert environment["WORKER_WORKER_ID"] == name
        assert environment["WORKER_ADVERTISE_URL"] == f"http://{name}:9001"
    gpu = [s for s in workers.values() if "gpu" in s["profiles"]]
    assert all(s["deploy"]["resources"]["reservations"]["devices"] for s in gpu)
    # Prometheus finds every worker service (and only those) by its DNS name.
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert set(jobs["worker"]["dns_sd_configs"][0]["names"]) == set(workers)
    assert jobs["router"]["dns_sd_configs"][0]["names"] == ["router"]


def test_compose_references_existing_files() -> None:
    for name, service in compose()["services"].items():
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert context == REPO, f"{name}: the build context is the repository root"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: {source} does not exist"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_paths(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    stages = {args.split()[-1] for word, args in steps if word == "FROM" and " AS " in args}
    ignore = (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copies = [shlex.split(args) for word, args in steps if word == "COPY"]
    assert copies
    for argv in copies:
        flags = [a for a in argv if a.startswith("--")]
        *sources, _ = [a for a in argv if not a.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            assert flags[0].split("=", 1)[1] in stages
            continue
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
            assert source.rstrip("/") in kept, f"{source} is excluded by the .dockerignore"
    entrypoint = json.loads(next(args for word, args in steps if word == "ENTRYPOINT"))
    assert entrypoint[:2] == ["python", "-m"]
    assert (REPO / entrypoint[2] / "__main__.py").is_file()


def test_cuda_worker_builds_llama_cpp_with_cuda() -> None:
    text = (DOCKER / "worker-cuda.Dockerfile").read_text()
    assert "-DGGML_CUDA=on" in text
    assert "llama-cpp-python==0.3.36" in text
    pinned = re.search(r'"llama-cpp-python==([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pinned is not None and f"llama-cpp-python=={pinned.group(1)}" in text


# The first release past each runtime dependency's known advisories (see pyproject.toml).
ADVISORY_FLOORS = {"aiohttp": (3, 14, 4), "orjson": (3, 9, 15), "redis": (5, 0)}


def test_dependency_floors_are_past_the_advisories() -> None:
    """Every image installs the project's floors, so they must exclude the vulnerable releases."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([a-z-]+)(?:\[[a-z,]+\])?>=([\d.]+)(?:;.*)?", requirement)
        assert match, requirement
        floors[match.group(1)] = tuple(int(part) for part in match.group(2).split("."))
    for name, fixed in ADVISORY_FLOORS.items():
        assert floors[name] >= fixed, f"{name} floor {floors[name]} admits releases before {fixed}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    out = run([need("hadolint"), "--failure-threshold", "warning", str(dockerfile)])
    assert out.returncode == 0, out.stdout + out.stderr


def nginx_test(tmp: Path, conf: Path) -> None:
    out = run([need("nginx"), "-t", "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")])
    assert out.returncode == 0, out.stderr


def test_local_nginx_config(tmp_path: Path) -> None:
    spec = load_stack(DEPLOY / "local" / "stack.toml")
    for folder in ("logs", "nginx/tmp"):
        (tmp_path / folder).mkdir(parents=True)
    conf = tmp_path / "nginx" / "nginx.conf"
    text = nginx_conf(spec, tmp_path)
    conf.write_text(text)
    nginx_test(tmp_path, conf)
    assert f"listen 127.0.0.1:{spec.nginx_port};" in text
    for port in spec.router_ports():
        assert f"server 127.0.0.1:{port} " in text
    assert "keepalive 64;" in text


def test_proxy_refuses_metrics() -> None:
    """tests/security/test_metrics_port.py runs nginx with it; here, the rule is where it must be:
    a `^~` prefix location (regex locations cannot override it), before the catch-all."""
    proxy = (DEPLOY / "nginx" / "proxy.conf").read_text()
    block = proxy.index("location ^~ /metrics {")
    assert "return 404" in proxy[block : proxy.index("}", block)]
    assert block < proxy.index("location / {")


def test_proxy_settings_are_safe_for_streams() -> None:
    proxy = (DEPLOY / "nginx" / "proxy.conf").read_text()
    for directive in (
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_read_timeout 600s;",
        "proxy_request_buffering off;",
    ):
        assert directive in proxy


def test_compose_nginx_config(tmp_path: Path) -> None:
    """The compose config, made checkable here: the router's name (resolved by Docker's DNS) and
    `resolve` (nginx >= 1.27.3; Debian's is older) swapped out, the includes pointed here."""
    site = (DOCKER / "nginx.conf").read_text()
    mounts = {
        target: source
        for source, target, *_ in (v.split(":") for v in compose()["services"]["nginx"]["volumes"])
    }
    assert mounts["/etc/nginx/conf.d/default.conf"] == "./nginx.conf"
    proxy = (DOCKER / mounts["/etc/nginx/xero/proxy.conf"]).resolve()
    assert proxy == DEPLOY / "nginx" / "proxy.conf"
    site = site.replace("server router:8080 resolve", "server 127.0.0.1:8080")
    site = site.replace("/etc/nginx/xero/proxy.conf", str(proxy))
    (tmp_path / "default.conf").write_text(site)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nevents {{}}\n"
        f"http {{\n    include {tmp_path}/default.conf;\n}}\n"
    )
    nginx_test(tmp_path, conf)
