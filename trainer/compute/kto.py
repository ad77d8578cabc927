"""Kahneman-Tversky Optimisation on TRL's `KTOTrainer`: learning from thumbs up and down.

Rows: `{"prompt": [messages ending with a user turn], "completion": str, "label": bool}`,
unpaired: a rated answer needs no better or worse twin, so every thumbs-up or thumbs-down
is a training example. Good and bad examples are weighted so that
desirable_weight * n_good / (undesirable_weight * n_bad) is 1, inside the [1, 4/3] band the
KTO paper recommends, whatever the mix of ratings. KTO estimates its KL term by pairing
each prompt with another example's answer within a batch, so each process needs at least
two examples per micro-batch.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from trl import KTOConfig, KTOTrainer

from core.errors import bad_request
from trainer.compute.encoding import validate_prompt
from trainer.compute.recipe import Recipe

Config = KTOConfig
Trainer = KTOTrainer


def build_dataset(tokenizer: Any, rows: list[dict[str, Any]], recipe: Recipe) -> tuple[Dataset, int]:
    out = []
    for row in rows:
        validate_prompt(row["prompt"])
        if not isinstance(row.get("label"), bool):
            raise bad_request("a KTO example needs a boolean label", param="label")
        completion = [{"role": "assistant", "content": row["completion"]}]
        out.append({"prompt": row["prompt"], "completion": completion, "label": row["label"]})
    return Dataset.from_list(out), 0


def class_weights(n_good: int, n_bad: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) that balance the two kinds of example."""
    if n_good == 0 or n_bad == 0:
        return 1.0, 1.0
    if n_good >= n_bad:
        return 1.0, n_good / n_bad
    return n_bad / n_good, 1.0


def config_args(recipe: Recipe, dataset: Dataset) -> dict[str, Any]:
    labels = dataset["label"]
    auto_good, auto_bad = class_weights(sum(labels), len(labels) - sum(labels))
    return {
        "beta": recipe.beta,
        "max_length": recipe.max_seq_length,
        "desirable_weight": recipe.desirable_weight if recipe.desirable_weight is not None else auto_good,
        "undesirable_weight": recipe.undesirable_weight if recipe.undesirable_weight is not None else auto_bad,
        "per_device_train_batch_size": max(2, recipe.per_device_batch_size),
    }
