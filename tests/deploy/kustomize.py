"""Render a kustomization offline: with `kubectl kustomize` where it exists, else with `build`.

`build` is a small renderer for exactly the subset deploy/k8s uses, so the manifests can be
checked on a machine without kubectl: `resources` (files and directories), `namespace`, `images`,
and `patches` (by `path` or inline `patch`; strategic merge, including `$patch: delete`, or
JSON 6902 with a `target`). Anything else in a kustomization is an error, not silently ignored.
Where kubectl exists the tests also check that both renderings agree.

Strategic merge here is the part of Kubernetes' rules the patches need: maps merge recursively,
the lists in MERGE_KEYS merge item by item on their merge key (in kustomize's order), every other
list is replaced.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

KNOWN_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
}


def kubectl() -> str | None:
    return shutil.which("kubectl")


def kubectl_build(directory: Path) -> list[Resource]:
    exe = kubectl()
    assert exe is not None
    out = subprocess.run(
        [exe, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{out.stderr[-2000:]}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def build(directory: Path) -> list[Resource]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KNOWN_FIELDS
    if unknown:
        raise ValueError(f"{directory}: fields this renderer does not support: {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            resources += build(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        resources = _apply_patch(directory, resources, patch)
    namespace = kustomization.get("namespace")
    if namespace:
        for res in resources:
            if res["kind"] not in CLUSTER_SCOPED:
                res.setdefault("metadata", {})["namespace"] = namespace
    for image in kustomization.get("images", []):
        for res in resources:
            _set_image(res, image)
    return resources


def _apply_patch(
    directory: Path, resources: list[Resource], patch: dict[str, Any]
) -> list[Resource]:
    text = (directory / patch["path"]).read_text() if "path" in patch else patch["patch"]
    docs = [doc for doc in yaml.safe_load_all(text) if doc]
    if "target" in patch:  # JSON 6902
        for res in resources:
            if _matches(res, patch["target"]):
                _json6902(res, docs[0])
        return resources
    for doc in docs:
        resources = _strategic_merge(resources, doc)
    return resources


def by_identity(resources: list[Resource]) -> dict[tuple[str, str, str, str], Resource]:
    """Resources keyed by (apiVersion, kind, namespace, name)."""
    keyed = {}
    for res in resources:
        meta = res.get("metadata", {})
        key = (res["apiVersion"], res["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in keyed, f"duplicate resource {key}"
        keyed[key] = res
    return keyed


def _matches(res: Resource, target: dict[str, str]) -> bool:
    group, _, _ = res["apiVersion"].rpartition("/")
    checks = {
        "kind": res["kind"],
        "name": res["metadata"]["name"],
        "group": group,
        "version": res["apiVersion"].rpartition("/")[2],
    }
    return all(checks[k] == v for k, v in target.items() if k in checks)


def _strategic_merge(resources: list[Resource], patch: Resource) -> list[Resource]:
    target = {"kind": patch["kind"], "name": patch["metadata"]["name"]}
    matched = [r for r in resources if _matches(r, target)]
    if len(matched) != 1:
        raise ValueError(f"patch for {target} matches {len(matched)} resources")
    if patch.get("$patch") == "delete":
        return [r for r in resources if r is not matched[0]]
    merged = _merge(matched[0], patch)
    return [merged if r is matched[0] else r for r in resources]


def _merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        # As kustomize orders them: the patch's items first (merged into the base item with the
        # same key, if any), then the base items the patch does not mention.
        merge_key = MERGE_KEYS[key]
        old_items = {item.get(merge_key): item for item in base}
        patched = [
            _merge(old_items[item.get(merge_key)], item)
            if item.get(merge_key) in old_items
            else copy.deepcopy(item)
            for item in patch
        ]
        mentioned = {item.get(merge_key) for item in patch}
        rest = [copy.deepcopy(item) for item in base if item.get(merge_key) not in mentioned]
        return patched + rest
    return copy.deepcopy(patch)


def _json6902(res: Resource, ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        node: Any = res
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] in ("add", "replace"):
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
                if op["op"] == "add":
                    node.insert(index, op["value"])
                else:
                    node[index] = op["value"]
            else:
                node[last] = op["value"]
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise ValueError(f"unsupported JSON patch op {op['op']}")


def _set_image(res: Resource, image: dict[str, str]) -> None:
    pod = res.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name, tag = _split_image(container["image"])
        if name != image["name"]:
            continue
        new_name = image.get("newName", name)
        new_tag = image.get("newTag", tag)
        container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def _split_image(ref: str) -> tuple[str, str]:
    last = ref.rpartition("/")[2]
    if ":" in last:
        return ref[: len(ref) - len(last)] + last.partition(":")[0], last.partition(":")[2]
    return ref, ""
