"""Building blocks of the Grafana dashboard: panels, targets and their placement on the grid."""

from __future__ import annotations

from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
M = 'model=~"$model"'
W = 'worker=~"$worker"'
R = 'router=~"$router"'
QUANTILES = (0.5, 0.9, 0.99)

Panel = dict[str, Any]
# Grafana units: a count is "none" (or "short" for a rate of things without a unit of their own),
# a rate of requests "reqps", of operations "ops", a duration "s", a fraction "percentunit",
# memory "bytes". tests/deploy/test_grafana.py checks each panel's unit against its series.
UNITS = frozenset({"none", "short", "reqps", "ops", "s", "percentunit", "bytes"})


class Layout:
    """Places panels left to right in rows of 24 grid units."""

    def __init__(self) -> None:
        self.panels: list[Panel] = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "id": self._id(),
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel: Panel, w: int = 8, h: int = 8) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self) -> None:
        self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _targets(*exprs: tuple[str, str]) -> list[dict[str, Any]]:
    return [
        {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
        for i, (expr, legend) in enumerate(exprs)
    ]


def _thresholds(warn: float | None, alert: float | None) -> dict[str, Any]:
    """Green below `warn`, orange from it, red from `alert` (an alert rule's bound)."""
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if warn is not None:
        steps.append({"color": "orange", "value": warn})
    if alert is not None:
        steps.append({"color": "red", "value": alert})
    return {"mode": "absolute", "steps": steps}


def timeseries(
    title: str,
    unit: str,
    *exprs: tuple[str, str],
    description: str = "",
    stack: bool = False,
    warn: float | None = None,
    alert: float | None = None,
) -> Panel:
    defaults: dict[str, Any] = {"unit": unit, "min": 0}
    custom: dict[str, Any] = {}
    if stack:
        custom.update(stacking={"mode": "normal"}, fillOpacity=20)
    if warn is not None or alert is not None:
        defaults["thresholds"] = _thresholds(warn, alert)
        custom["thresholdsStyle"] = {"mode": "line+area"}
    if custom:
        defaults["custom"] = custom
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": _targets(*exprs),
    }


def stat(
    title: str,
    unit: str,
    expr: str,
    legend: str = "",
    description: str = "",
    warn: float | None = None,
    alert: float | None = None,
) -> Panel:
    defaults: dict[str, Any] = {"unit": unit}
    if warn is not None or alert is not None:
        defaults["thresholds"] = _thresholds(warn, alert)
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
        "targets": _targets((expr, legend)),
    }


def table(title: str, expr: str, description: str = "") -> Panel:
    """An instant query shown as rows of its labels: for info metrics (`*_build_info`)."""
    targets = _targets((expr, ""))
    targets[0].update(instant=True, format="table")
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": "none"}, "overrides": []},
        "options": {"showHeader": True},
        "transformations": [
            {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}
        ],
        "targets": targets,
    }


def quantiles(metric: str, selector: str, by: str = "") -> tuple[tuple[str, str], ...]:
    """p50/p90/p99 of a histogram, optionally one line per `by` label."""
    group = f"{by}, le" if by else "le"
    legend = f"{{{{{by}}}}} " if by else ""
    buckets = f"rate({metric}_bucket{{{selector}}}[{RATE}])"
    return tuple(
        (f"histogram_quantile({q}, sum by ({group}) ({buckets}))", f"{legend}p{round(q * 100)}")
        for q in QUANTILES
    )
