"""Benchmarks: a small async load generator, stack start/stop helpers, and the scenarios.

- `loadgen`: closed-loop OpenAI chat load at a fixed concurrency, per-request timings.
- `stack`: redis-server + fake-engine workers + one router on free local ports, torn down by PID.
- `router_overhead`: router-added latency (interleaved with direct-to-worker) and max requests/s.

Results the README quotes live in `benchmarks/results/`.
"""
