import sys

from loadtests.bench_churn.cli import main

sys.exit(main())
