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


def timeseries(
    title: str, unit: str, *exprs: tuple[str, str], description: str = "", stack: bool = False
) -> Panel:
    defaults: dict[str, Any] = {"unit": unit, "min": 0}
    if stack:
        defaults["custom"] = {"stacking": {"mode": "normal"}, "fillOpacity": 20}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": _targets(*exprs),
    }


def stat(title: str, unit: str, expr: str, legend: str = "", description: str = "") -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
        "targets": _targets((expr, legend)),
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
