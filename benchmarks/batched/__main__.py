"""`python -m benchmarks.batched`."""

from benchmarks.batched.cli import main

raise SystemExit(main())
