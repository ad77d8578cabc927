"""Supervised fine-tuning on TRL's `SFTTrainer`, assistant-only loss.

Rows: `{"messages": [{"role", "content"}, ...]}` (OpenAI's chat fine-tuning lines). Tailor
tokenises them itself (trainer.compute.encoding: the loss mask for any prefix-stable chat
template) and hands TRL a pre-tokenised dataset of `input_ids` and `assistant_masks`, which
SFTTrainer turns into labels; packing, if asked for, packs those rows.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from trainer.compute.encoding import encode_conversation
from trainer.compute.recipe import Recipe

Config = SFTConfig
Trainer = SFTTrainer


def build_dataset(tokenizer: Any, rows: list[dict[str, Any]], recipe: Recipe) -> tuple[Dataset, int]:
    """(pre-tokenised dataset, examples dropped for having no assistant token left)."""
    kept = []
    for row in rows:
        messages = [{"role": m.get("role"), "content": m.get("content")} for m in row["messages"]]
        encoded = encode_conversation(tokenizer, messages, recipe.max_seq_length)
        if encoded is not None:
            kept.append({"input_ids": encoded.input_ids, "assistant_masks": encoded.assistant_mask})
    return Dataset.from_list(kept), len(rows) - len(kept)


def config_args(recipe: Recipe, dataset: Dataset) -> dict[str, Any]:
    return {"max_length": recipe.max_seq_length, "packing": recipe.packing}
