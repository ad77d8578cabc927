"""What a supervised job stores for the knobs it left out: "auto", each resolved by the worker.

Named here, not read from trainer.hyperparameters, so that a knob added, renamed or dropped
there fails the tests that compare a job's hyperparameters with this list.
"""

from __future__ import annotations

from typing import Any

SUPERVISED_KNOBS = (
    "n_epochs",
    "batch_size",
    "learning_rate_multiplier",
    "lora_rank",
    "lora_alpha",
    "max_steps",
    "target_modules",
    "max_seq_length",
    "gradient_accumulation_steps",
    "packing",
    "early_stopping",
    "quantization",
    "finetuning_type",
)


def supervised_hyperparameters(**given: Any) -> dict[str, Any]:
    """A supervised job's hyperparameters as stored: `given`, and "auto" for every other knob."""
    return {**dict.fromkeys(SUPERVISED_KNOBS, "auto"), **given}
