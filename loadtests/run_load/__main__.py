import sys

from loadtests.run_load.cli import main

sys.exit(main())
