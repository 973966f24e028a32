"""deploy/k8s's trust boundaries: the NetworkPolicies, evaluated; the Secrets and ACL wiring.

`allowed` evaluates the rendered NetworkPolicies as Kubernetes does (a pod selected by no policy
of a direction is open that way; a selected pod admits only what some rule of a selecting policy
admits; named ports resolve on the destination pod), so the matrix below reads as the intended
boundary: clients reach routers, only routers reach workers, only routers, workers and the admin
CLI reach Redis, only Prometheus reaches a metrics port, and nothing gets out but DNS and those.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from deploy.generate import ACL_START
from deploy.redis import acl
from deploy.redis.secrets import k8s_secrets
from tests.deploy.test_k8s import OVERLAYS, container, find, rendered
from tests.deploy.tools import REPO

NAMESPACE = "xero"


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: str | None  # None: outside the cluster
    labels: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    ip: str = "10.0.0.1"


def pods(resources: tuple[dict[str, Any], ...]) -> dict[str, Endpoint]:
    """One Endpoint per Deployment of the namespace: its pod labels and named container ports."""
    found = {}
    for res in resources:
        if res["kind"] != "Deployment":
            continue
        spec = res["spec"]["template"]
        ports = {
            p["name"]: p["containerPort"]
            for c in spec["spec"]["containers"]
            for p in c.get("ports", [])
        }
        name = res["metadata"]["name"]
        found[name] = Endpoint(name, NAMESPACE, spec["metadata"]["labels"], ports)
    return found


PROMETHEUS = Endpoint(
    "prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, {"web": 9090}
)
KUBE_DNS = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})
INTRUDER = Endpoint("intruder", NAMESPACE, {"app": "debug"})  # any other pod of the namespace
NEIGHBOUR = Endpoint("neighbour", "other", {"app.kubernetes.io/name": "xero-router"})
INTERNET = Endpoint("internet", None, ip="203.0.113.7")
ADMIN = Endpoint("admin", NAMESPACE, {"app.kubernetes.io/name": "xero-admin"})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def peer_matches(peer: dict[str, Any], other: Endpoint) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        excepted = any(address in ipaddress.ip_network(c) for c in block.get("except", []))
        # Pod traffic is matched by pod IP too; only outside addresses are used here.
        inside = address in ipaddress.ip_network(block["cidr"])
        return other.namespace is None and inside and not excepted
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        ns_labels = {"kubernetes.io/metadata.name": other.namespace}
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif other.namespace != NAMESPACE:
        return False
    return selects(peer.get("podSelector", {}), other.labels)


def port_matches(rule_ports: list[dict[str, Any]], dst: Endpoint, port: int, proto: str) -> bool:
    if not rule_ports:
        return True
    for item in rule_ports:
        if item.get("protocol", "TCP") != proto:
            continue
        wanted = item.get("port")
        if wanted is None or wanted == port or dst.ports.get(str(wanted)) == port:
            return True
    return False


def policies(resources: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] == "NetworkPolicy"]


def side_allows(
    resources: tuple[dict[str, Any], ...],
    pod: Endpoint,
    direction: str,
    other: Endpoint,
    dst: Endpoint,
    port: int,
    proto: str,
) -> bool:
    """Does `pod`'s side (Ingress: it receives; Egress: it sends) let this connection through?"""
    if pod.namespace != NAMESPACE:
        return True  # not ours to close
    selecting = [
        p
        for p in policies(resources)
        if selects(p["spec"]["podSelector"], pod.labels) and direction in p["spec"]["policyTypes"]
    ]
    if not selecting:
        return True
    rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    return any(
        (peers_key not in rule or any(peer_matches(peer, other) for peer in rule[peers_key]))
        and port_matches(rule.get("ports", []), dst, port, proto)
        for policy in selecting
        for rule in policy["spec"].get(rules_key, [])
    )


def allowed(
    resources: tuple[dict[str, Any], ...],
    src: Endpoint,
    dst: Endpoint,
    port: int | str,
    proto: str = "TCP",
) -> bool:
    number = dst.ports[port] if isinstance(port, str) else port
    return side_allows(resources, src, "Egress", dst, dst, number, proto) and side_allows(
        resources, dst, "Ingress", src, dst, number, proto
    )


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_everything_is_closed_by_default(overlay: str) -> None:
    resources = rendered(overlay)
    deny = find(resources, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    # Every pod is named by some policy that opens what it needs (not only by the default deny).
    for pod in pods(resources).values():
        opened = [
            p["metadata"]["name"]
            for p in policies(resources)
            if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], pod.labels)
        ]
        assert opened, f"{pod.name}: no NetworkPolicy opens anything for it"


def test_only_routers_reach_the_workers(overlay: str) -> None:
    resources = rendered(overlay)
    found = pods(resources)
    router, worker = found["router"], found["worker-smollm2"]
    sources = [*found.values(), PROMETHEUS, INTRUDER, NEIGHBOUR, INTERNET, ADMIN]
    admitted = [s.name for s in sources if allowed(resources, s, worker, "http")]
    assert admitted == ["router"]
    assert not allowed(resources, router, worker, "metrics")
    assert allowed(resources, PROMETHEUS, worker, "metrics")


def test_clients_reach_the_routers_public_port_only(overlay: str) -> None:
    resources = rendered(overlay)
    router = pods(resources)["router"]
    for client in (INTERNET, NEIGHBOUR):  # a load balancer, an ingress controller
        assert allowed(resources, client, router, "http"), client.name
        assert not allowed(resources, client, router, "metrics"), client.name
    assert allowed(resources, PROMETHEUS, router, "metrics")
    # A stray pod of this namespace gets nowhere: the namespace's default deny covers its egress.
    assert not allowed(resources, INTRUDER, router, "http")


def test_only_routers_workers_and_admin_reach_redis() -> None:
    resources = rendered("cpu")
    found = pods(resources)
    redis = found["redis"]
    sources = [*found.values(), PROMETHEUS, INTRUDER, NEIGHBOUR, INTERNET, ADMIN]
    admitted = sorted(s.name for s in sources if allowed(resources, s, redis, "redis"))
    assert admitted == ["admin", "router", "worker-smollm2"]
    assert allowed(resources, PROMETHEUS, redis, "metrics")  # the exporter
    assert not allowed(resources, INTRUDER, redis, "metrics")


def test_nothing_gets_out_but_dns_and_the_paths_above(overlay: str) -> None:
    resources = rendered(overlay)
    found = pods(resources)
    for pod in found.values():
        assert allowed(resources, pod, KUBE_DNS, 53, "UDP"), pod.name
        assert not allowed(resources, pod, INTERNET, 443), pod.name
        assert not allowed(resources, pod, NEIGHBOUR, 8080), pod.name
    assert not allowed(resources, found["worker-smollm2"], found["router"], "http")


def test_managed_redis_is_reached_outside_the_cluster() -> None:
    resources = rendered("managed-redis")
    found = pods(resources)
    managed = Endpoint("managed-redis", None, ip="198.51.100.20")
    for client in (found["router"], found["worker-smollm2"], ADMIN):
        assert allowed(resources, client, managed, 6380), client.name
    assert not allowed(resources, INTRUDER, managed, 6380)
    assert not allowed(resources, found["router"], managed, 443)


# -- Secrets, the ACL, the prefix -----------------------------------------------------------------


def references(resources: tuple[dict[str, Any], ...], kind: str) -> Iterator[tuple[str, str]]:
    """Every (name, key) a pod reads from a Secret (kind secretKeyRef) or ConfigMap."""
    for res in resources:
        for c in res.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for variable in c.get("env", []):
                ref = variable.get("valueFrom", {}).get(kind)
                if ref:
                    yield ref["name"], ref["key"]


@pytest.mark.parametrize("managed", [False, True])
def test_the_secrets_command_provides_every_secret_the_pods_read(managed: bool) -> None:
    resources = rendered("managed-redis" if managed else "cpu")
    made = json.loads(k8s_secrets(NAMESPACE, "redis://redis:6379/0", managed))["items"]
    provided = {(s["metadata"]["name"], key) for s in made for key in s["stringData"]}
    wanted = set(references(resources, "secretKeyRef"))
    assert wanted <= provided, wanted - provided
    assert not any(r["kind"] == "Secret" for r in resources), "a Secret must not be in git"
    urls = next(s["stringData"] for s in made if s["metadata"]["name"] == "xero-redis")
    assert urls["router-url"].startswith("redis://router:")
    assert urls["worker-url"].startswith("redis://worker:")


def test_redis_fills_in_every_placeholder_of_the_acl_template() -> None:
    resources = rendered("cpu")
    configmap = find(resources, "ConfigMap", "redis-acl")["data"]
    assert configmap["users.acl.in"] == acl.template()
    assert configmap["start.sh"] == ACL_START.read_text()
    redis = container(find(resources, "Deployment", "redis"), "redis")
    assert redis["command"] == ["sh", "/etc/redis/acl/start.sh"]
    assert redis["args"][:3] == ["redis-server", "--aclfile", "/run/redis/users.acl"]
    given = {e["name"] for e in redis["env"]}
    assert acl.placeholders(acl.template()) <= given
    probe = " ".join(redis["readinessProbe"]["exec"]["command"])
    assert "--user exporter" in probe and "PONG" in probe  # the default user is off


def test_one_prefix_for_every_component() -> None:
    resources = rendered("cpu")
    config = find(resources, "ConfigMap", "xero-config")["data"]
    assert config["redis-prefix"]
    readers = {
        variable["name"]
        for res in resources
        for c in res.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        for variable in c.get("env", [])
        if variable.get("valueFrom", {}).get("configMapKeyRef", {}).get("key") == "redis-prefix"
    }
    assert readers == {"ROUTER_REDIS_PREFIX", "WORKER_REDIS_PREFIX", "XERO_REDIS_PREFIX"}


def test_monitors_scrape_the_metrics_ports(overlay: str) -> None:
    resources = rendered(overlay)
    for monitor in (r for r in resources if r["kind"] in ("ServiceMonitor", "PodMonitor")):
        endpoints = monitor["spec"].get("endpoints") or monitor["spec"]["podMetricsEndpoints"]
        assert [e["port"] for e in endpoints] == ["metrics"], monitor["metadata"]["name"]
    for name in ("router", "worker-smollm2"):
        ports = pods(resources)[name].ports
        assert set(ports) == {"http", "metrics"}, name


def test_compose_wires_the_same_boundaries() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "docker" / "docker-compose.yml").read_text())
    services = compose["services"]
    redis = services["redis"]
    assert redis["entrypoint"] == ["sh", "/etc/redis/acl/start.sh"]
    assert "--aclfile" in redis["command"]
    assert acl.placeholders(acl.template()) <= set(redis["environment"])
    for name, role in (("router", "router"), ("worker-cpu-1", "worker"), ("admin", "admin")):
        environment = services[name]["environment"]
        assert environment["REDIS_URL"].startswith(f"redis://{role}:${{REDIS_{role.upper()}_"), name
    for name in ("router", "worker-cpu-1", "worker-gpu-1"):
        environment = services[name]["environment"]
        assert environment["XERO_WORKER_SECRET"].startswith("${XERO_WORKER_SECRET:?"), name
    assert services["router"]["environment"]["ROUTER_METRICS_PORT"] == "9180"
    assert services["worker-cpu-1"]["environment"]["WORKER_METRICS_PORT"] == "9181"
    assert "ports" not in services["router"]  # only nginx is published
