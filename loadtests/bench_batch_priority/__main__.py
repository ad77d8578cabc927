import sys

from loadtests.bench_batch_priority.cli import main

sys.exit(main())
