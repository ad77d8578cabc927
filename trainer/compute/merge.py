"""Merge a LoRA adapter into its base model's weights, check the result, save it whole.

`PeftModel.from_pretrained(base, adapter).merge_and_unload()` folds each B·A·(alpha/r) into
the weight it adapts. The merge runs in float32 (bf16 would round every sum), and is checked
before anything is saved: the logits of one forward pass over a few prompts, adapter applied
versus merged, must agree (max abs difference under MAX_LOGIT_DIFF), or the merge is refused.
The model is then cast back to the base's own dtype and saved with safetensors and the base's
tokenizer, so the directory serves on its own; how many greedy next tokens the saved
precision keeps is measured too (bf16 rounding may flip a near tie).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import TailorError
from trainer.compute.weights import save_atomically

# Prompts of the check: a few tokens each, so the check costs one short forward per prompt.
CHECK_PROMPTS = (
    "What is the capital of France?",
    "Write a short greeting for a customer.",
    "My order has not arrived yet. What should I do?",
)
# float32 merging only reorders sums: differences above this mean the merge went wrong.
MAX_LOGIT_DIFF = 1e-2


@dataclass(frozen=True)
class MergeCheck:
    """How closely the merged model answers like the adapter on the base, on `prompts` prompts."""

    max_abs_logit_diff: float  # float32 merged vs adapter applied, every position
    next_token_agreement: float  # share of positions whose greedy token the saved dtype keeps
    prompts: int
    dtype: str  # the saved weights' dtype (the base model's own)
    seconds: float

    def as_metrics(self) -> dict[str, Any]:
        return {f"merge_{k}": v for k, v in asdict(self).items()}


def merge_adapter(
    base_dir: Path, adapter_dir: Path, out_dir: Path, *, prompts: Sequence[str] = CHECK_PROMPTS
) -> MergeCheck:
    """Write base + adapter, merged, to out_dir (absent before; written atomically)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype="auto")
    saved_dtype = base.dtype
    adapted = PeftModel.from_pretrained(base.float(), adapter_dir).eval()
    inputs = [tokenizer(p, return_tensors="pt").input_ids for p in prompts]
    with torch.inference_mode():
        reference = [adapted(ids).logits[0] for ids in inputs]
        merged = adapted.merge_and_unload()
        diff = max(float((merged(ids).logits[0] - ref).abs().max()) for ids, ref in zip(inputs, reference, strict=True))
        if diff > MAX_LOGIT_DIFF:
            raise TailorError(
                500,
                f"The merged model's logits differ from the adapter's by {diff:.4g} (at most {MAX_LOGIT_DIFF} "
                "is expected); nothing was registered.",
                code="merge_mismatch",
            )
        merged = merged.to(saved_dtype)
        same = total = 0
        for ids, ref in zip(inputs, reference, strict=True):
            got = merged(ids).logits[0].float()
            same += int((got.argmax(-1) == ref.argmax(-1)).sum())
            total += ref.shape[0]
    save_atomically(merged, out_dir, tokenizer=tokenizer)
    return MergeCheck(
        max_abs_logit_diff=diff,
        next_token_agreement=same / total,
        prompts=len(inputs),
        dtype=str(saved_dtype).removeprefix("torch."),
        seconds=round(time.monotonic() - started, 1),
    )
