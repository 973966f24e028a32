"""Result files: the summary JSON, per-request JSONL, the sweep CSV and PNG plots.

For a run named NAME in folder OUT:

- `OUT/NAME.json`: `{"metadata": ..., "config": ..., "runs": [one flat summary per level]}`,
  each summary with vLLM `bench serve` key names (see benchmarks.metrics.summarize),
- `OUT/NAME.requests.jsonl`: one line per request (benchmarks.metrics.RequestRecord.to_json)
  with its level's index and label,
- `OUT/NAME.csv`: one row per level, the scalar figures of its summary,
- `OUT/NAME.latency.png` (TTFT, TPOT, ITL, E2E percentiles against load) and
  `OUT/NAME.throughput.png` (requests/s, output tokens/s, goodput against load), when
  matplotlib is installed (`pip install -e '.[bench]'`); otherwise a warning and no PNGs.

Plots take several series (e.g. one per worker count) so the scenarios can share them.
"""

from __future__ import annotations

import csv
import importlib
import io
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from benchmarks.metrics import RequestRecord

logger = logging.getLogger(__name__)

JSON_OPTIONS = orjson.OPT_INDENT_2
LATENCY_PANELS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E"))
PLOT_PERCENTILES = ("p50", "p90", "p99")


def dumps(data: Any) -> bytes:
    """Indented JSON; NaN and infinities become null."""
    return orjson.dumps(data, option=JSON_OPTIONS) + b"\n"


def write_summary(path: Path, metadata: Mapping[str, Any], config: Any, runs: Any) -> None:
    path.write_bytes(dumps({"metadata": metadata, "config": config, "runs": runs}))


def read_summary(path: Path) -> dict[str, Any]:
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path}: not a summary file")
    return data


def write_requests(path: Path, levels: Iterable[tuple[str, Sequence[RequestRecord]]]) -> None:
    with path.open("wb") as f:
        for level, (label, records) in enumerate(levels):
            for record in records:
                line = {"level": level, "label": label, **record.to_json()}
                f.write(orjson.dumps(line) + b"\n")


def read_requests(path: Path) -> list[RequestRecord]:
    with path.open("rb") as f:
        return [RequestRecord.from_json(orjson.loads(line)) for line in f if line.strip()]


def csv_text(runs: Sequence[Mapping[str, Any]]) -> str:
    """Scalar figures one row per level; `errors` flattened to `code=count;...`."""
    columns: list[str] = []
    for run in runs:
        for key, value in run.items():
            if key not in columns and (key == "errors" or not isinstance(value, dict | list)):
                columns.append(key)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for run in runs:
        row = {k: _cell(run.get(k)) for k in columns}
        writer.writerow(row)
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ";".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


@dataclass(frozen=True, slots=True)
class Series:
    """One line on a plot: a name and its levels' summaries, in order of load."""

    name: str
    runs: Sequence[Mapping[str, Any]]
    x_key: str  # "concurrency" or "request_rate"


def _pyplot() -> Any:
    try:
        matplotlib = importlib.import_module("matplotlib")  # optional: the `bench` extra
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, never a window
    return importlib.import_module("matplotlib.pyplot")


def _x(run: Mapping[str, Any], key: str) -> float:
    value = run.get(key)
    if value == "inf":
        return math.inf
    return float(value) if isinstance(value, int | float) else math.nan


def x_label(x_key: str) -> str:
    return "concurrency (requests in flight)" if x_key == "concurrency" else "request rate (req/s)"


def plot(
    path_prefix: Path, series: Sequence[Series], title: str, x_title: str | None = None
) -> list[Path]:
    """Write PATH_PREFIX.latency.png and PATH_PREFIX.throughput.png; [] without matplotlib."""
    plt = _pyplot()
    if plt is None:
        logger.warning("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    xt = x_title or x_label(series[0].x_key)
    written = [
        _latency_plot(plt, path_prefix.with_name(path_prefix.name + ".latency.png"), series, xt),
        _throughput_plot(
            plt, path_prefix.with_name(path_prefix.name + ".throughput.png"), series, xt
        ),
    ]
    for path, kind in zip(written, ("latency", "throughput"), strict=True):
        logger.debug("wrote %s plot %s (%s)", kind, path, title)
    return written


def _points(s: Series, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for run in s.runs:
        x, y = _x(run, s.x_key), run.get(key)
        if math.isfinite(x) and isinstance(y, int | float) and math.isfinite(y):
            xs.append(x)
            ys.append(float(y))
    return xs, ys


def _x_axis(ax: Any, series: Sequence[Series], x_title: str) -> None:
    """The levels as ticks; a log-2 axis when they span a factor of 4 or more."""
    xs = sorted({x for s in series for run in s.runs if math.isfinite(x := _x(run, s.x_key))})
    ax.set_xlabel(x_title)
    if not xs:
        return
    if xs[0] > 0 and xs[-1] / xs[0] >= 4:
        ax.set_xscale("log", base=2)
        ax.minorticks_off()
    if len(xs) <= 12:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])


def _latency_plot(plt: Any, path: Path, series: Sequence[Series], x_title: str) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    styles = {"p50": "-", "p90": "--", "p99": ":"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (metric, title) in zip(axes.flat, LATENCY_PANELS, strict=True):
        for i, s in enumerate(series):
            for pct in PLOT_PERCENTILES:
                xs, ys = _points(s, f"{pct}_{metric}_ms")
                if xs:
                    name = pct if len(series) == 1 else f"{s.name} {pct}"
                    ax.plot(xs, ys, styles[pct], marker="o", color=colors[i % len(colors)],
                            label=name)  # fmt: skip
        ax.set_title(f"{title} (ms)")
        _finish_axis(ax, series, x_title)
    return _save(plt, fig, path)


def _throughput_plot(plt: Any, path: Path, series: Sequence[Series], x_title: str) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    for s in series:
        prefix = "" if len(series) == 1 else f"{s.name} "
        xs, ys = _points(s, "request_throughput")
        axes[0].plot(xs, ys, "-", marker="o", label=f"{prefix}completed")
        gx, gy = _points(s, "request_goodput")
        if gx:
            axes[0].plot(gx, gy, "--", marker="x", label=f"{prefix}goodput (met SLOs)")
        ox, oy = _points(s, "output_throughput")
        axes[1].plot(ox, oy, "-", marker="o", label=f"{s.name}")
    axes[0].set_title("requests/s")
    axes[1].set_title("output tokens/s")
    for ax in axes:
        _finish_axis(ax, series, x_title)
    return _save(plt, fig, path)


def _finish_axis(ax: Any, series: Sequence[Series], x_title: str) -> None:
    _x_axis(ax, series, x_title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize="small")


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def fmt_ms(value: Any) -> str:
    """A millisecond figure for a Markdown table."""
    if not isinstance(value, int | float) or math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def fmt_num(value: Any, digits: int = 1) -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def fmt_errors(errors: Mapping[str, int] | None) -> str:
    return ", ".join(f"{k} x{v}" for k, v in (errors or {}).items()) or "0"
