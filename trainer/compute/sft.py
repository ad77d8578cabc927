"""Supervised fine-tuning on TRL's `SFTTrainer`, assistant-only loss.

Rows: `{"messages": [{"role", "content"}, ...]}` (OpenAI's chat fine-tuning lines). Tailor
tokenises them itself (trainer.compute.encoding: the loss mask for any prefix-stable chat
template) and hands TRL a pre-tokenised dataset of `input_ids` and `assistant_masks`, which
SFTTrainer turns into labels; packing, if asked for, packs those rows (never the validation rows).

Evaluation adds `eval_exact_match` to TRL's metrics: the share of validation conversations
whose every answer token (end-of-turn included) is the model's top-1 prediction given the
reference prefix. That is exactly "greedy decoding reproduces the answer and stops", read off
the evaluation forward pass TRL runs anyway: no generation and no second copy of the model.
"""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from trainer.compute.encoding import encode_conversation
from trainer.compute.recipe import Recipe

Config = SFTConfig


class Trainer(SFTTrainer):
    """SFTTrainer whose evaluations also report eval_exact_match (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # TRL patches this module's forward with its fused LM head, whose output says per token
        # whether the label was the top-1 prediction; a hook reads it without changing the forward.
        inner = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        inner.register_forward_hook(self._score_answers)

    def _score_answers(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        is_top1, mask = getattr(output, "is_top1", None), getattr(output, "label_mask", None)
        if module.training or is_top1 is None or mask is None:
            return
        exact = (is_top1.sum(-1) == mask.sum(-1)).float()
        # Every rank runs the same evaluation batches, so this gather is matched on all of them;
        # gather_for_metrics drops the rows the distributed sampler repeated to even the shards.
        rows = self.accelerator.gather_for_metrics(exact)
        # One entry per conversation: TRL's log averages the list, so this is the exact share.
        self._metrics["eval"]["exact_match"].extend(rows.tolist())


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
    # Validation rows stay one conversation each: exact match is judged per conversation.
    return {"max_length": recipe.max_seq_length, "packing": recipe.packing, "eval_packing": False}


# Answers up to this many tokens (end of turn included) are "short": labels, codes, a templated
# sentence. Exact match is then what the job is for and what the validation rows are scored
# on; a longer answer is rarely reproduced word for word, so its runs are compared on the loss.
SHORT_ANSWER_TOKENS = 32


def short_answers(dataset: Dataset) -> bool:
    """Whether the typical (median) conversation's answer tokens count as a short answer."""
    counts = sorted(sum(mask) for mask in dataset["assistant_masks"])
    return bool(counts) and counts[len(counts) // 2] <= SHORT_ANSWER_TOKENS
