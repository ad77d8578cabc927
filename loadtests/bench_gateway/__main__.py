import sys

from loadtests.bench_gateway.cli import main

sys.exit(main())
