"""Direct Preference Optimisation on TRL's `DPOTrainer`.

Rows: `{"prompt": [messages ending with a user turn], "chosen": str, "rejected": str}`.
TRL renders them with the model's chat template and scores only the answers. The reference
is the model before training: TRL keeps a frozen copy of the LoRA as it starts under the name
"ref" (a fresh LoRA adds nothing, so that is the base model; a job that continues from an
adapter stays close to that adapter rather than to the untuned base). No second copy of the
base weights is loaded.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from core.errors import bad_request
from trainer.compute.encoding import validate_prompt
from trainer.compute.recipe import Recipe

Config = DPOConfig
Trainer = DPOTrainer


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def build_dataset(tokenizer: Any, rows: list[dict[str, Any]], recipe: Recipe) -> tuple[Dataset, int]:
    out = []
    for i, row in enumerate(rows):
        validate_prompt(row["prompt"])
        if row["chosen"] == row["rejected"]:
            # the loss is a constant log 2 with zero gradient: almost surely a data bug
            raise bad_request(f"pair {i}: chosen and rejected answers are identical")
        out.append(
            {"prompt": row["prompt"], "chosen": _assistant(row["chosen"]), "rejected": _assistant(row["rejected"])}
        )
    return Dataset.from_list(out), 0  # TRL drops pairs truncation empties; run.py counts them


def config_args(recipe: Recipe, dataset: Dataset) -> dict[str, Any]:
    return {"beta": recipe.beta, "max_length": recipe.max_seq_length}
