"""`python -m trainer.worker`: see trainer.worker.loop.main."""

from trainer.worker.loop import main

raise SystemExit(main())
