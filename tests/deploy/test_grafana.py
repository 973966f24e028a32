"""deploy/grafana: the dashboard's shape and its provisioning.

Its queries are run against a live Prometheus in test_local_stack.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from deploy.grafana.panels import UNITS
from tests.deploy.tools import DEPLOY

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "xero-router.json"
ROWS = {
    "Overview",
    "Latency (router view, p50 / p90 / p99)",
    "Per model",
    "Per worker",
    "Registry and Redis",
    "Admission queue and breakers",
    "Tenants and limits",
    "Capacity",
    "Versions",
}
# Panel -> the red threshold, which is the bound of the alert rule on the same series.
THRESHOLDS = {
    "Error ratio (5xx / all)": 0.05,  # RouterHighErrorRate
    "Time to first token (streams)": 2,  # RouterTTFTHigh
    "Registry staleness": 10,  # RegistryStale
    "Backlog per worker (waiting / workers)": 4,  # WorkerQueueBacklog
    "Queue rejections by reason": 0.05,  # AdmissionQueueRejecting
    "Breakers open": 1,  # WorkerBreakerOpen
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


def unit_for(exprs: list[str]) -> set[str]:
    """The units that fit what a panel's queries compute."""
    if all(e.startswith("histogram_quantile(") and "_seconds_bucket" in e for e in exprs):
        return {"s"}
    if any("_bytes" in e for e in exprs):
        return {"bytes"} if all("_bytes" in e for e in exprs) else set()
    if any(" / " in e for e in exprs):
        return {"percentunit"}
    if all("rate(" in e for e in exprs):
        requests = all("_requests_total" in e or "rejections_total" in e for e in exprs)
        return {"reqps"} if requests else {"ops", "short", "reqps"}
    if any("_seconds" in e for e in exprs):
        return {"s"}
    return {"none"}  # gauges and instant counts: how many


def test_every_panel_has_the_unit_of_what_it_plots() -> None:
    """A key count is not bytes, a latency is seconds, a ratio is a fraction of 1."""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            continue
        unit = panel["fieldConfig"]["defaults"]["unit"]
        assert unit in UNITS, panel["title"]
        exprs = [t["expr"] for t in panel["targets"]]
        if panel["type"] == "table" or panel["title"] == "Tokens per second":
            continue  # labels only; a sum and a quantile of the same rate
        assert unit in unit_for(exprs), (panel["title"], unit, unit_for(exprs))


def test_key_panels_turn_red_at_their_alert_bound() -> None:
    panels = {p["title"]: p for p in dashboard()["panels"]}
    for title, bound in THRESHOLDS.items():
        defaults = panels[title]["fieldConfig"]["defaults"]
        steps = defaults["thresholds"]["steps"]
        assert steps[0] == {"color": "green", "value": None}, title
        assert steps[-1] == {"color": "red", "value": bound}, title
        assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", title
