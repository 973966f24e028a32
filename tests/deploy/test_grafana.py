"""deploy/grafana: the dashboard's shape and its provisioning.

Its queries are run against a live Prometheus in test_local_stack.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.deploy.tools import DEPLOY

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "xero-router.json"
ROWS = {
    "Overview",
    "Latency (router view, p50 / p90 / p99)",
    "Per model",
    "Per worker",
    "Registry and Redis",
    "Tenants and limits",
    "Capacity",
}


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def targets() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def test_rows_and_variables() -> None:
    d = dashboard()
    assert {p["title"] for p in d["panels"] if p["type"] == "row"} == ROWS
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert set(variables) == {"datasource", "model", "worker", "router"}
    for name in ("model", "worker", "router"):
        assert variables[name]["multi"] and variables[name]["includeAll"]
        assert variables[name]["allValue"] == ".*"


def test_panels_are_well_formed() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))


def test_latency_panels_show_three_quantiles() -> None:
    for title in (
        "Time to first token (streams)",
        "Inter-token gap",
        "End-to-end duration",
        "Router overhead",
        "Queue wait: router admission",
        "Queue wait: worker slot",
    ):
        panel = next(p for p in dashboard()["panels"] if p["title"] == title)
        quantiles = [
            re.match(r"histogram_quantile\(([\d.]+),", t["expr"]) for t in panel["targets"]
        ]
        assert [float(q.group(1)) for q in quantiles if q] == [0.5, 0.9, 0.99], title


def test_queries_filter_on_the_template_variables() -> None:
    for title, expr in targets():
        if "router_" in expr:
            assert "$router" in expr, title
        if "worker_" in expr and "router_" not in expr:
            assert "$model" in expr or "$worker" in expr, title
        # Rates use Grafana's interval, which follows the scrape interval.
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", title


def test_provisioning() -> None:
    sources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "xero-router.yml").read_text()
    )
    [provider] = providers["providers"]
    compose = yaml.safe_load((DEPLOY / "docker" / "docker-compose.yml").read_text())
    mounts = dict(
        v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith(".")
    )
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
