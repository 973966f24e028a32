"""deploy/k8s: every overlay renders, and every resource validates offline against its schema.

Kubernetes' own kinds are validated (strict: unknown fields are errors) with kubernetes-validate's
bundled schemas; ServiceMonitor, PodMonitor, PrometheusRule and ScaledObject against their CRDs'
own schemas (tests/deploy/schemas/). Rendering: `kubectl kustomize` where it exists, and always
the small renderer in tests/deploy/kustomize.py, which must agree with kubectl.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy import kustomize
from tests.deploy.kustomize import Resource

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate (the test extra) ships schemas"
)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
K8S_VERSION = "1.30.0"  # the oldest Kubernetes these manifests target
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_v1_podmonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
}
MODEL = "smollm2-135m-instruct"


@cache
def rendered(overlay: str) -> tuple[Resource, ...]:
    return tuple(kustomize.build(K8S / "overlays" / overlay))


def find(resources: tuple[Resource, ...], kind: str, name: str) -> Resource:
    matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def container(deployment: Resource, name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def test_overlays_exist() -> None:
    assert set(OVERLAYS) >= {"cpu", "gpu", "managed-redis"}


@pytest.mark.skipif(kustomize.kubectl() is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_agrees_with_kubectl_kustomize(overlay: str) -> None:
    ours = kustomize.by_identity(list(rendered(overlay)))
    theirs = kustomize.by_identity(kustomize.kubectl_build(K8S / "overlays" / overlay))
    assert sorted(ours) == sorted(theirs)
    for key, res in ours.items():
        assert res == theirs[key], f"{overlay}: {key} differs from kubectl kustomize"


@cache
def crd_schema(filename: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / filename).read_text())
    return schema


@cache
def crd_validator(filename: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(crd_schema(filename))


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields a CRD's structural schema does not declare: the API server would prune them
    silently (kubectl's --validate=strict rejects them), so here they are errors."""
    errors: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return errors
        for key, item in value.items():
            if key in schema["properties"]:
                errors += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
            elif path == "" and key in ("apiVersion", "kind", "metadata"):
                continue
            else:
                errors.append(f"unknown field {path}.{key}")
    elif isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            errors += unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return errors


def test_unknown_crd_fields_are_caught() -> None:
    monitor = copy.deepcopy(find(rendered("cpu"), "PodMonitor", "worker"))
    monitor["spec"]["podMetricsEndpoints"][0]["intervall"] = "15s"
    schema = crd_schema(CRD_SCHEMAS[("monitoring.coreos.com/v1", "PodMonitor")])
    assert unknown_fields(monitor, schema) == [
        "unknown field .spec.podMetricsEndpoints[0].intervall"
    ]


def test_kubernetes_validate_is_strict() -> None:
    deployment = copy.deepcopy(find(rendered("cpu"), "Deployment", "router"))
    container(deployment, "router")["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_resource_validates(overlay: str) -> None:
    for res in rendered(overlay):
        where = f"{overlay}: {res['kind']}/{res['metadata']['name']}"
        crd = CRD_SCHEMAS.get((res["apiVersion"], res["kind"]))
        if crd is not None:
            errors = [e.message for e in crd_validator(crd).iter_errors(res)]
            errors += unknown_fields(res, crd_schema(crd))
            assert not errors, f"{where}: {errors[:3]}"
            continue
        try:
            kubernetes_validate.validate(res, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_their_pods(overlay: str) -> None:
    resources = rendered(overlay)
    pods = {
        r["metadata"]["name"]: r["spec"]["template"]["metadata"]["labels"]
        for r in resources
        if r["kind"] == "Deployment"
    }
    for res in resources:
        if res["kind"] == "Deployment":
            selector = res["spec"]["selector"]["matchLabels"]
            assert selector.items() <= pods[res["metadata"]["name"]].items()
        elif res["kind"] in ("Service", "PodDisruptionBudget", "PodMonitor", "ServiceMonitor"):
            spec = res["spec"]
            selector = spec["selector"].get("matchLabels", spec["selector"])
            if res["kind"] == "ServiceMonitor":  # selects Services, which select pods
                services = [
                    s
                    for s in resources
                    if s["kind"] == "Service"
                    and selector.items() <= s["metadata"].get("labels", {}).items()
                ]
                assert services, f"ServiceMonitor {res['metadata']['name']} selects no Service"
                continue
            assert any(selector.items() <= labels.items() for labels in pods.values()), (
                f"{res['kind']}/{res['metadata']['name']} selects no pod"
            )
    for scaler in (
        r for r in resources if r["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
    ):
        assert scaler["spec"]["scaleTargetRef"]["name"] in pods


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_router(overlay: str) -> None:
    resources = rendered(overlay)
    deployment = find(resources, "Deployment", "router")
    router = container(deployment, "router")
    # Ready after its first registry read (router.handlers.ready); alive while it answers.
    assert router["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert router["livenessProbe"]["httpGet"]["path"] == "/health"
    assert router["resources"]["requests"]["cpu"]
    assert router["resources"]["limits"]["memory"]
    variables = env(router)
    # Its own Redis user (router-url), the worker secret, and /metrics on its own port only.
    assert variables["REDIS_URL"] == {"secretKeyRef": {"name": "xero-redis", "key": "router-url"}}
    assert variables["XERO_WORKER_SECRET"] == {
        "secretKeyRef": {"name": "xero-worker-secret", "key": "secret"}
    }
    ports = {p["name"]: p["containerPort"] for p in router["ports"]}
    assert variables["ROUTER_METRICS_PORT"] == str(ports["metrics"])
    assert ports["metrics"] != ports["http"]
    assert find(resources, "PodDisruptionBudget", "router")["spec"]["minAvailable"] >= 1
    hpa = find(resources, "HorizontalPodAutoscaler", "router")
    assert hpa["spec"]["minReplicas"] >= 2
    # The HPA owns the replica count; a fixed one would be reset by every `kubectl apply`.
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_advertises_its_pod_ip(overlay: str) -> None:
    deployment = find(rendered(overlay), "Deployment", "worker-smollm2")
    worker = container(deployment, "worker")
    variables = env(worker)
    assert variables["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert variables["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert variables["WORKER_ADVERTISE_URL"] == "http://$(POD_IP):9001"
    assert variables["WORKER_WORKER_ID"] == "$(POD_NAME)"
    assert variables["WORKER_MODEL_ID"] == MODEL
    assert variables["REDIS_URL"] == {"secretKeyRef": {"name": "xero-redis", "key": "worker-url"}}
    assert variables["XERO_WORKER_SECRET"] == {
        "secretKeyRef": {"name": "xero-worker-secret", "key": "secret"}
    }
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert variables["WORKER_METRICS_PORT"] == str(ports["metrics"])
    names = [e["name"] for e in worker["env"]]  # $(VAR) only sees variables defined before it
    assert names.index("POD_IP") < names.index("WORKER_ADVERTISE_URL")
    assert names.index("POD_NAME") < names.index("WORKER_WORKER_ID")
    assert worker["ports"][0]["containerPort"] == 9001
    assert "startupProbe" in worker and "readinessProbe" in worker and "livenessProbe" in worker
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["xero.ai/model"] == MODEL


def test_gpu_overlay_requests_a_gpu() -> None:
    gpu = container(find(rendered("gpu"), "Deployment", "worker-smollm2"), "worker")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert env(gpu)["WORKER_N_GPU_LAYERS"] == "-1"
    assert "cuda" in gpu["image"]
    # The merge kept the base's downward-API variables.
    assert env(gpu)["WORKER_ADVERTISE_URL"] == "http://$(POD_IP):9001"
    cpu = container(find(rendered("cpu"), "Deployment", "worker-smollm2"), "worker")
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})


def test_managed_redis_overlay_drops_the_in_cluster_redis() -> None:
    resources = rendered("managed-redis")
    names = {(r["kind"], r["metadata"]["name"]) for r in resources}
    assert not names & {
        ("Deployment", "redis"),
        ("Service", "redis"),
        ("ConfigMap", "redis-acl"),
        ("PodMonitor", "redis"),
        ("NetworkPolicy", "redis"),
    }
    assert ("Deployment", "router") in names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_one_namespace(overlay: str) -> None:
    resources = rendered(overlay)
    namespaces = {r["metadata"]["name"] for r in resources if r["kind"] == "Namespace"}
    assert namespaces == {"xero"}
    for res in resources:
        if res["kind"] != "Namespace":
            assert res["metadata"]["namespace"] == "xero", res["metadata"]["name"]
    for res in resources:
        for c in res.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            assert not c["image"].startswith("xero-"), f"{c['image']}: overlay sets no image"


def test_monitoring_labels_match_the_dashboard_and_alerts() -> None:
    """job=router/worker, router=<pod>, worker=<pod>, model=<model>: what every query reads."""
    resources = rendered("cpu")
    service_monitor = find(resources, "ServiceMonitor", "router")
    pod_monitor = find(resources, "PodMonitor", "worker")

    def targets(relabelings: list[dict[str, Any]]) -> dict[str, Any]:
        return {r["targetLabel"]: r.get("sourceLabels", r.get("replacement")) for r in relabelings}

    router = targets(service_monitor["spec"]["endpoints"][0]["relabelings"])
    assert router == {"job": "router", "router": ["__meta_kubernetes_pod_name"]}
    worker = targets(pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"])
    assert worker == {
        "job": "worker",
        "worker": ["__meta_kubernetes_pod_name"],
        "model": ["__meta_kubernetes_pod_label_xero_ai_model"],
    }


def test_keda_scales_workers_on_their_queue_gauges() -> None:
    scaler = find(rendered("cpu"), "ScaledObject", "worker-smollm2")
    [trigger] = scaler["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert "worker_requests_waiting" in query and "worker_requests_running" in query
    assert f'model="{MODEL}"' in query
    assert float(trigger["metadata"]["threshold"]) > 0


def test_prometheus_rule_carries_the_shared_alerts() -> None:
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    rule = find(rendered("cpu"), "PrometheusRule", "xero-router")
    assert rule["spec"]["groups"] == alerts["groups"]
