"""The torch line: serving and the trainer's domain import no torch, transformers, peft or TRL.

The gateway validates jobs, files and hyperparameters with the trainer's domain modules; a
stray import of the compute side would cost every gateway process hundreds of MiB and
seconds of start-up. Checked in a fresh interpreter, since this one has torch loaded already.
"""

from __future__ import annotations

import json
import subprocess
import sys

SERVING_AND_DOMAIN = (
    "gateway.app",
    "gateway.cli",
    "gateway.services",
    "trainer.datasets",
    "trainer.distill",
    "trainer.evaluate",
    "trainer.feedback",
    "trainer.files",
    "trainer.gates",
    "trainer.hyperparameters",
    "trainer.jobs",
    "trainer.policy",
    # what the worker's supervising side needs to start a training process
    "trainer.compute.launch",
    "trainer.compute.placement",
    "trainer.compute.recipe",
    # the worker's evaluation: the engine does the model's work
    "trainer.compute.engine",
    "trainer.compute.evaluation",
    # deriving a smaller base model copies weights as bytes
    "adapters.derived_model",
)
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "datasets")


def test_serving_and_the_trainer_domain_import_no_torch() -> None:
    code = (
        f"import importlib, json, sys\nfor m in {SERVING_AND_DOMAIN!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
