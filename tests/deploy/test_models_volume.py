"""The model volume in deploy/: Kubernetes (a PVC filled by a Job, an init container that waits
for the model, workers reading it offline) and compose (a named volume filled by a one-shot
service); the hub spec they name is the default model's, and it parses."""

from __future__ import annotations

from typing import Any

from tests.deploy.test_docker import compose
from tests.deploy.test_k8s import container, env, find, rendered
from tests.deploy.test_k8s_security import INTERNET, KUBE_DNS, NAMESPACE, Endpoint, allowed, pods
from tests.worker.hub_cache import SMOLLM_COMMIT, SMOLLM_FILE, SMOLLM_REPO
from worker.models import HubFile

SPEC = HubFile(SMOLLM_REPO, SMOLLM_FILE, SMOLLM_COMMIT)


def mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def test_a_job_fills_the_shared_model_volume() -> None:
    resources = rendered("cpu")
    claim = find(resources, "PersistentVolumeClaim", "models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica, any node
    job = find(resources, "Job", "fetch-model-smollm2")["spec"]["template"]["spec"]
    fetch = job["containers"][0]
    assert fetch["command"] == ["python", "-m", "worker.models", "fetch"]
    assert fetch["args"] == [str(SPEC), "--cache-dir", "/models"]
    assert not mounts(fetch)["models"].get("readOnly", False)
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models"}} in job["volumes"]
    assert job["securityContext"]["fsGroup"] == job["securityContext"]["runAsUser"]


def test_workers_wait_for_the_model_and_read_it_offline() -> None:
    deployment = find(rendered("cpu"), "Deployment", "worker-smollm2")["spec"]["template"]["spec"]
    (wait,) = deployment["initContainers"]
    worker = container({"spec": {"template": {"spec": deployment}}}, "worker")
    assert wait["args"] == ["--cache-dir", "/models"]
    assert env(wait)["WORKER_MODEL_PATH"] == env(worker)["WORKER_MODEL_PATH"] == str(SPEC)
    assert env(wait)["HF_HUB_OFFLINE"] == env(worker)["HF_HUB_OFFLINE"] == "1"
    assert env(worker)["WORKER_MODEL_CACHE_DIR"] == mounts(worker)["models"]["mountPath"]
    assert mounts(worker)["models"]["readOnly"] and mounts(wait)["models"]["readOnly"]
    probe = worker["readinessProbe"]["httpGet"]  # the port opens only with the model loaded
    assert (probe["path"], probe["port"]) == ("/health", "http")


def test_only_the_model_job_gets_out_and_only_to_https() -> None:
    resources = rendered("cpu")
    job = Endpoint("fetch", NAMESPACE, {"app.kubernetes.io/name": "xero-model-fetch"})
    found = pods(resources)
    assert allowed(resources, job, INTERNET, 443)
    assert allowed(resources, job, KUBE_DNS, 53, "UDP")
    assert not allowed(resources, job, INTERNET, 80)
    assert not allowed(resources, job, found["redis"], "redis")
    assert not allowed(resources, job, found["worker-smollm2"], "http")
    assert not allowed(resources, found["worker-smollm2"], INTERNET, 443)
    assert not allowed(resources, found["router"], job, 443)


def test_compose_fills_a_named_volume_before_the_workers_start() -> None:
    services = compose()["services"]
    fetch = services["fetch-model"]
    assert fetch["command"] == ["fetch", str(SPEC), "--cache-dir", "/models"]
    assert "models:/models" in fetch["volumes"]
    for name in ("worker-cpu-1", "worker-cpu-2", "worker-gpu-1"):
        worker = services[name]
        assert worker["depends_on"]["fetch-model"] == {
            "condition": "service_completed_successfully"
        }
        assert "models:/models:ro" in worker["volumes"]
        variables = worker["environment"]
        assert variables["WORKER_MODEL_PATH"] == str(SPEC)
        assert (variables["WORKER_MODEL_CACHE_DIR"], variables["HF_HUB_OFFLINE"]) == (
            "/models",
            "1",
        )
    assert "models" in compose()["volumes"]
