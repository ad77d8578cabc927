"""An adapter merged into its base: the same answers, a whole model a server takes as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from adapters.validation import BaseModelSpec
from adapters.version_files import validate_version_dir
from core.errors import TailorError
from core.states import VersionKind
from trainer.compute import merge
from trainer.compute.merge import merge_adapter

PROMPTS = ("What is the capital of France?", "Paris is. Berlin is.")


def save_tiny_lora(base_dir: Path, out: Path) -> Path:
    """A rank-4 LoRA on the tiny model with random (non-zero) B matrices: it changes answers."""
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "lora")


def _logits(model: torch.nn.Module, tok: PreTrainedTokenizerBase, prompt: str) -> torch.Tensor:
    with torch.inference_mode():
        return model(tok(prompt, return_tensors="pt").input_ids).logits[0]


def test_the_merged_model_answers_like_the_adapter_and_validates_as_a_model(
    tiny_model_dir: Path, tiny_lora: Path, tiny_tok: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    check = merge_adapter(tiny_model_dir, tiny_lora, out, prompts=PROMPTS)
    assert check.prompts == 2 and check.dtype == "float32"
    assert check.max_abs_logit_diff < 1e-4 and check.next_token_agreement == 1.0
    assert check.as_metrics()["merge_max_abs_logit_diff"] == check.max_abs_logit_diff

    limits = {"max_rank": 64, "max_bytes": 1 << 30, "max_model_bytes": 1 << 30}
    files = validate_version_dir(out, base=BaseModelSpec.from_config_dir(tiny_model_dir), **limits)
    assert files.kind == VersionKind.MODEL
    assert not (out / "adapter_config.json").exists() and (out / "tokenizer_config.json").is_file()

    # Read back from disk, on its own: what the adapter on the base answers, not what the base does.
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_lora)
    for prompt in PROMPTS:
        got = _logits(merged, tiny_tok, prompt)
        assert torch.allclose(got, _logits(adapted, tiny_tok, prompt), atol=1e-4)
        assert not torch.allclose(got, _logits(base, tiny_tok, prompt), atol=1e-3)


def test_the_base_models_dtype_is_kept(tiny_model_dir: Path, tiny_lora: Path, tmp_path: Path) -> None:
    bf16_base = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).to(torch.bfloat16).save_pretrained(bf16_base)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bf16_base / name).write_bytes((tiny_model_dir / name).read_bytes())
    check = merge_adapter(bf16_base, tiny_lora, tmp_path / "merged", prompts=PROMPTS)
    assert check.dtype == "bfloat16" and check.max_abs_logit_diff < 1e-3
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype="auto").dtype == torch.bfloat16


def test_a_merge_that_does_not_match_the_adapter_saves_nothing(
    tiny_model_dir: Path, tiny_lora: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(merge, "MAX_LOGIT_DIFF", -1.0)
    with pytest.raises(TailorError) as err:
        merge_adapter(tiny_model_dir, tiny_lora, tmp_path / "merged", prompts=PROMPTS)
    assert err.value.code == "merge_mismatch"
    assert list(tmp_path.iterdir()) == []
