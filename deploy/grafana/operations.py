"""The dashboard's rows for running the service: registry and Redis, the admission queue and
the breakers, tenants and limits, capacity, versions (deploy.grafana.dashboard places them)."""

from __future__ import annotations

from deploy.grafana.panels import RATE, Layout, M, R, W, quantiles, stat, table, timeseries


def registry(g: Layout) -> None:
    g.row("Registry and Redis")
    g.add(
        timeseries(
            "Registry view by router",
            "none",
            (
                f"sum by (router, state) (router_registry_workers{{{M}, {R}}})",
                "{{router}} {{state}}",
            ),
        )
    )
    g.add(
        timeseries(
            "Registry staleness",
            "s",
            (f"max by (router) (router_registry_staleness_seconds{{{R}}})", "{{router}}"),
            description="Since each router's last successful full read (alert at 10 s).",
            warn=5,
            alert=10,
        )
    )
    g.add(
        timeseries(
            "Registry errors",
            "ops",
            (
                f"sum by (router, op) (rate(router_registry_errors_total{{{R}}}[{RATE}]))",
                "{{router}} {{op}}",
            ),
        )
    )
    g.add(stat("Redis up", "none", "min(redis_up)"), w=4)
    g.add(stat("Redis clients", "none", "sum(redis_connected_clients)"), w=4)
    g.add(
        timeseries(
            "Redis commands per second",
            "ops",
            (f"sum(rate(redis_commands_processed_total[{RATE}]))", "commands"),
        )
    )
    g.add(
        timeseries("Redis memory", "bytes", ("sum(redis_memory_used_bytes)", "memory used")),
        w=4,
    )
    g.add(timeseries("Redis keys", "none", ("sum(redis_db_keys)", "keys")), w=4)
    g.add(
        timeseries(
            "Invalid registry records",
            "ops",
            (
                f"sum by (router, source) "
                f"(rate(router_registry_invalid_records_total{{{R}}}[{RATE}]))",
                "{{router}} {{source}}",
            ),
            description="Worker records or events skipped as malformed (each logged once).",
        )
    )


def admission(g: Layout) -> None:
    g.row("Admission queue and breakers")
    g.add(
        timeseries(
            "Admission queue length",
            "none",
            (f"sum by (model) (router_queue_length{{{M}, {R}}})", "{{model}}"),
            description="Requests waiting for worker capacity, all routers.",
            warn=1,
        )
    )
    g.add(
        timeseries(
            "Queue wait: router admission",
            "s",
            *quantiles("router_queue_wait_seconds", R),
            description="Wait for capacity in the router's admission queue.",
        )
    )
    g.add(
        timeseries(
            "Queue rejections by reason",
            "reqps",
            (
                f"sum by (reason) (rate(router_queue_rejections_total{{{R}}}[{RATE}]))",
                "{{reason}}",
            ),
            description="503 queue_full / queue_timeout (alert: > 0.05/s for 10 minutes).",
            alert=0.05,
        )
    )
    g.add(
        timeseries(
            "Breaker transitions by worker",
            "none",
            (
                "sum by (worker, state) "
                f"(increase(router_breaker_transitions_total{{{W}, {R}}}[{RATE}]))",
                "{{worker}} {{state}}",
            ),
            description="Workers put aside (open) and taken back (closed), all routers.",
        ),
        w=12,
    )
    g.add(
        timeseries(
            "Breakers open",
            "none",
            (
                f"sum by (worker) (router_worker_breaker_open{{{M}, {W}, {R}}})",
                "{{worker}}",
            ),
            description="Routers whose breaker keeps each worker aside (alert after 10 minutes).",
            alert=1,
        ),
        w=12,
    )


def tenants(g: Layout) -> None:
    g.row("Tenants and limits")
    g.add(
        timeseries(
            "Tokens per project",
            "short",
            (
                f"sum by (project, kind) (rate(router_tokens_total{{{R}}}[{RATE}]))",
                "{{project}} {{kind}}",
            ),
            description="Tokens per second as metered for keyed requests, cut streams included.",
            stack=True,
        )
    )
    g.add(
        timeseries(
            "Metered tokens per model",
            "short",
            (
                f"sum by (model, kind) (rate(router_model_tokens_total{{{M}, {R}}}[{RATE}]))",
                "{{model}} {{kind}}",
            ),
            description="Keyed tokens by model; all tokens served: 'Tokens per second by model'.",
            stack=True,
        )
    )
    g.add(
        timeseries(
            "Relay bounds and settle errors",
            "ops",
            (
                f"sum by (limit) (rate(router_relay_limits_total{{{R}}}[{RATE}]))",
                "cut: {{limit}}",
            ),
            (f"sum(rate(router_settle_errors_total{{{R}}}[{RATE}]))", "settle errors"),
            description="Answers cut at a bound (frame, body, duration); usage not recorded.",
        )
    )


def capacity(g: Layout) -> None:
    g.row("Capacity")
    g.add(
        timeseries(
            "Slots busy by model (running / slots)",
            "percentunit",
            (
                f"sum by (model) (worker_requests_running{{{M}, {W}}}) "
                f"/ sum by (model) (worker_slots{{{M}, {W}}})",
                "{{model}}",
            ),
            description="The share of the model's slots generating; 100%: new requests queue.",
            warn=0.9,
        )
    )
    g.add(
        timeseries(
            "Backlog per worker (waiting / workers)",
            "none",
            (f"avg by (model) (worker_requests_waiting{{{M}, {W}}})", "{{model}}"),
            description="KEDA scales the workers on this; the WorkerQueueBacklog alert is at 4.",
            warn=2,
            alert=4,
        )
    )
    g.add(
        timeseries(
            "Slots busy per worker",
            "none",
            (f"sum by (worker) (worker_requests_running{{{M}, {W}}})", "{{worker}} busy"),
            (f"sum by (worker) (worker_slots{{{M}, {W}}})", "{{worker}} slots"),
            description="Generations running against the worker's slots.",
        )
    )
    g.add(
        timeseries(
            "KV cache cells in use per worker",
            "percentunit",
            (
                f"sum by (worker) (worker_kv_cells_used{{{M}, {W}}}) "
                f"/ sum by (worker) (worker_kv_cells{{{M}, {W}}})",
                "{{worker}}",
            ),
            description="Running streams and the prompt caches kept; full is normal under load.",
        )
    )
    g.add(
        timeseries(
            "In flight per router",
            "none",
            (f"sum by (router) (router_worker_in_flight{{{M}, {R}}})", "{{router}}"),
        )
    )


def versions(g: Layout) -> None:
    g.row("Versions")
    g.add(
        table(
            "Router versions",
            f"count by (version, python, aiohttp) (router_build_info{{{R}}})",
            description="Replicas per build; two rows while a rollout is under way.",
        ),
        w=12,
    )
    g.add(
        table(
            "Worker versions",
            f"count by (version, engine, llama_cpp_python, python) (worker_build_info{{{M}, {W}}})",
            description="Workers per build and engine.",
        ),
        w=12,
    )
