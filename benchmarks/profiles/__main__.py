import sys

from benchmarks.profiles.hotpath import main

sys.exit(main())
