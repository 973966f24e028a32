"""Profiling the router's hot path: a mock upstream, the minimal relay floor, and a driver that
measures CPU per request (procfs) and, on request, profiles the router with cProfile or py-spy.
`python -m benchmarks.profiles --help`."""
