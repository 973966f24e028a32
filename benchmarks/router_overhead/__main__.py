"""`python -m benchmarks.router_overhead`."""

from benchmarks.router_overhead.cli import main

raise SystemExit(main())
