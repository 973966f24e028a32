"""The Grafana dashboard, as code: `python3 -m deploy.generate` writes it to
deploy/grafana/dashboards/xero-router.json, which Grafana provisioning loads.

Every expression filters on the template variables $model, $worker and $router (multi-value,
"All" = `.*`). Series and their labels: router_* from the routers (`router` is the replica, from
the scrape config or the ServiceMonitor), worker_* from the workers (`worker`, `model` from the
scrape), redis_* from the Redis exporter. Quantiles are computed from histogram buckets.
Thresholds: red at an alert rule's bound (deploy/prometheus/alerts.yml), orange before it.
"""

from __future__ import annotations

from typing import Any

from deploy.grafana import operations
from deploy.grafana.panels import DS, RATE, Layout, M, Panel, R, W, quantiles, stat, timeseries

UID = "xero-router"


def _variables() -> list[dict[str, Any]]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "type": "query",
            "name": name,
            "label": label,
            "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"},
            "definition": query,
            "refresh": 2,  # on time range change
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return [
        {
            "type": "datasource",
            "name": "datasource",
            "label": "Data source",
            "query": "prometheus",
            "current": {},
        },
        query_var("model", "Model", "label_values(router_registry_workers, model)"),
        query_var(
            "worker", "Worker", 'label_values(worker_requests_running{model=~"$model"}, worker)'
        ),
        query_var("router", "Router", 'label_values(up{job="router"}, router)'),
    ]


def _overview(g: Layout) -> None:
    g.row("Overview")
    requests = f"router_requests_total{{{M}, {R}}}"
    g.add(
        timeseries(
            "Request rate by model and status",
            "reqps",
            (
                f"sum by (model, status_class) (rate({requests}[{RATE}]))",
                "{{model}} {{status_class}}",
            ),
            stack=True,
        )
    )
    five_xx = f'router_requests_total{{status_class="5xx", {M}, {R}}}'
    g.add(
        timeseries(
            "Error ratio (5xx / all)",
            "percentunit",
            (
                f"(sum by (model) (rate({five_xx}[{RATE}])) or 0 * sum by (model) "
                f"(rate({requests}[{RATE}]))) / sum by (model) (rate({requests}[{RATE}]))",
                "{{model}}",
            ),
            description="Zero, not empty, while no request failed (alert at 5%).",
            warn=0.01,
            alert=0.05,
        )
    )
    g.add(stat("Router replicas up", "none", f'count(up{{job="router", {R}}} == 1)'), w=4)
    g.add(
        stat(
            "Healthy workers",
            "none",
            f'sum(max by (model) (router_registry_workers{{state="ready", {M}, {R}}}))',
            description="Ready workers in the routers' registry view, all selected models.",
        ),
        w=4,
    )
    g.add(
        timeseries(
            "Healthy workers per model",
            "none",
            (f'max by (model) (router_registry_workers{{state="ready", {M}, {R}}})', "{{model}}"),
            (f'count by (model) (up{{job="worker", {M}}} == 1)', "{{model}} scraped up"),
        )
    )
    g.add(
        timeseries(
            "Rejections by reason",
            "reqps",
            (f"sum by (reason) (rate(router_rejections_total{{{R}}}[{RATE}]))", "{{reason}}"),
            description="Refused before any worker: 400, 404 model_not_found, 429, 503...",
        )
    )
    project_requests = f"router_project_requests_total{{{R}}}"
    g.add(
        timeseries(
            "Requests by project and endpoint",
            "reqps",
            (
                "sum by (project, project_endpoint, status_class) "
                f"(rate({project_requests}[{RATE}]))",
                "{{project}}/{{project_endpoint}} {{status_class}}",
            ),
            description="Chat completions of authenticated callers (empty with auth off).",
            stack=True,
        )
    )
    g.add(
        timeseries(
            "Upstream errors, retries and cancellations",
            "reqps",
            (
                f"sum by (kind) (rate(router_upstream_errors_total{{{W}, {R}}}[{RATE}]))",
                "error {{kind}}",
            ),
            (f"sum(rate(router_upstream_retries_total{{{M}, {R}}}[{RATE}]))", "retries"),
            (
                f"sum by (phase) (rate(router_cancellations_total{{{R}}}[{RATE}]))",
                "client gone while {{phase}}",
            ),
        )
    )


def _latency(g: Layout) -> None:
    g.row("Latency (router view, p50 / p90 / p99)")
    g.add(
        timeseries(
            "Time to first token (streams)",
            "s",
            *quantiles("router_time_to_first_byte_seconds", f'stream="true", {M}, {R}', "model"),
            description="Arrival at the router to the first SSE event relayed (alert: p99 > 2 s).",
            warn=1,
            alert=2,
        )
    )
    g.add(
        timeseries(
            "Inter-token gap",
            "s",
            *quantiles("router_inter_chunk_gap_seconds", f"{M}, {R}", "model"),
            description="Between consecutive chunks of a stream, as the router relays them.",
        )
    )
    g.add(
        timeseries(
            "End-to-end duration",
            "s",
            *quantiles("router_request_duration_seconds", f"{M}, {R}", "model"),
            description="Arrival to the last byte, streamed and not.",
        )
    )
    g.add(
        timeseries(
            "Router overhead",
            "s",
            *quantiles("router_overhead_seconds", R),
            description="Arrival to the upstream request sent: parsing, auth, worker choice.",
        )
    )
    g.add(
        timeseries(
            "Queue wait: worker slot",
            "s",
            *quantiles("worker_queue_wait_seconds", f"{M}, {W}", "model"),
            description="Arrival at the worker to holding a generation slot.",
        )
    )


def _per_model(g: Layout) -> None:
    g.row("Per model")
    duration_count = f"router_request_duration_seconds_count{{{M}, {R}}}"
    g.add(
        timeseries(
            "Requests by model, streamed or not",
            "reqps",
            (
                f"sum by (model, stream) (rate({duration_count}[{RATE}]))",
                "{{model}} stream={{stream}}",
            ),
            stack=True,
        )
    )
    g.add(
        timeseries(
            "Tokens per second by model",
            "short",
            (
                f"sum by (model) (rate(worker_completion_tokens_total{{{M}, {W}}}[{RATE}]))",
                "{{model}} completion",
            ),
            (
                f"sum by (model) (rate(worker_prompt_tokens_total{{{M}, {W}}}[{RATE}]))",
                "{{model}} prompt",
            ),
        )
    )
    g.add(_reuse("model"))
    g.add(
        timeseries(
            "Running and waiting by model",
            "none",
            (f"sum by (model) (worker_requests_running{{{M}, {W}}})", "{{model}} running"),
            (f"sum by (model) (worker_requests_waiting{{{M}, {W}}})", "{{model}} waiting"),
        )
    )
    g.add(
        timeseries(
            "Worker prompt time (engine TTFT)",
            "s",
            *quantiles("worker_time_to_first_token_seconds", f"{M}, {W}", "model"),
        )
    )
    g.add(
        timeseries(
            "Worker generation time",
            "s",
            *quantiles("worker_generation_seconds", f"{M}, {W}", "model"),
        )
    )


def _reuse(by: str) -> Panel:
    """Prompt tokens read from a KV cache (a slot's or the host prompt cache) instead of
    evaluated: what cache-aware routing buys."""
    cached = f"sum by ({by}) (rate(worker_prompt_tokens_cached_total{{{M}, {W}}}[{RATE}]))"
    evaluated = f"sum by ({by}) (rate(worker_prompt_tokens_evaluated_total{{{M}, {W}}}[{RATE}]))"
    return timeseries(
        f"Prompt cache reuse by {by}",
        "percentunit",
        (f"{cached} / ({cached} + {evaluated})", "{{" + by + "}}"),
        description="Share of prompt tokens reused from a cache; the rest were evaluated.",
    )


def _per_worker(g: Layout) -> None:
    g.row("Per worker")
    g.add(
        timeseries(
            "Load (running + waiting)",
            "none",
            (
                f"sum by (worker) (worker_requests_running{{{M}, {W}}} "
                f"+ worker_requests_waiting{{{M}, {W}}})",
                "{{worker}}",
            ),
            (
                f"sum by (worker) (router_worker_in_flight{{{M}, {W}, {R}}})",
                "{{worker}} in flight from routers",
            ),
            (f"sum by (worker) (worker_slots{{{M}, {W}}})", "{{worker}} slots"),
            description="Above its slots, a worker's requests wait in its own queue.",
        )
    )
    g.add(_reuse("worker"))
    chat = f'worker_http_requests_total{{route="/v1/chat/completions", {M}'
    g.add(
        timeseries(
            "Selection share",
            "percentunit",
            (
                f"sum by (worker) (rate({chat}, {W}}}[{RATE}])) "
                f"/ scalar(sum(rate({chat}}}[{RATE}])))",
                "{{worker}}",
            ),
            description="Each worker's share of the chat requests of the selected models.",
            stack=True,
        )
    )
    g.add(
        timeseries(
            "Tokens per second",
            "short",
            (
                f"sum by (worker) (rate(worker_completion_tokens_total{{{M}, {W}}}[{RATE}]))",
                "{{worker}} total",
            ),
            (
                "histogram_quantile(0.5, sum by (worker, le) "
                f"(rate(worker_generation_tokens_per_second_bucket{{{M}, {W}}}[{RATE}])))",
                "{{worker}} per request p50",
            ),
        )
    )
    g.add(
        timeseries(
            "Worker errors and refusals",
            "reqps",
            (
                f"sum by (worker) (rate(worker_engine_errors_total{{{M}, {W}}}[{RATE}]))",
                "{{worker}} engine errors",
            ),
            (
                f"sum by (worker) (rate(worker_requests_rejected_total{{{M}, {W}}}[{RATE}]))",
                "{{worker}} refused (queue full, draining)",
            ),
        )
    )
    g.add(
        timeseries(
            "Upstream errors by worker",
            "reqps",
            (
                f"sum by (worker, kind) (rate(router_upstream_errors_total{{{W}, {R}}}[{RATE}]))",
                "{{worker}} {{kind}}",
            ),
            description="connect, busy, timeout, broken, as the routers saw them.",
        )
    )
    g.add(
        stat(
            "Model load time",
            "s",
            f"max by (worker) (worker_model_load_seconds{{{M}, {W}}})",
            "{{worker}}",
        )
    )


def build() -> dict[str, Any]:
    g = Layout()
    _overview(g)
    _latency(g)
    _per_model(g)
    _per_worker(g)
    operations.registry(g)
    operations.admission(g)
    operations.tenants(g)
    operations.capacity(g)
    operations.versions(g)
    return {
        "uid": UID,
        "title": "xero-router",
        "description": "Router replicas, workers, latency, registry and capacity.",
        "tags": ["xero-router", "llm"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": _variables()},
        "annotations": {"list": []},
        "panels": g.panels,
    }
