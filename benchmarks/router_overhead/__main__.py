"""`python -m benchmarks.router_overhead`: the side-by-side comparison."""

from benchmarks.router_overhead.compare import main

raise SystemExit(main())
