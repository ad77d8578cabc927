import sys

from loadtests.soak.cli import main

sys.exit(main())
