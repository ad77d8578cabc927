"""Models for the trainer tests: a tiny random Llama with a tiny tokenizer, built in memory
(no download, seconds to train on), and the real base model when it is prepared.

Tiny: a byte-level BPE tokenizer trained on a few strings, with a ChatML chat template,
and a randomly initialised 2-layer Llama saved with it in the Hugging Face layout, so the
trainer loads it like any base model directory.

Real: models/SmolLM2-135M-Instruct, prepared by `make model`; tests that need it are
marked `@real_model` and skipped when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from trainer.compute.synthetic import bpe_chat_tokenizer

REAL_MODEL = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct"
real_model = pytest.mark.skipif(
    not ((REAL_MODEL / "config.json").exists() and (REAL_MODEL / "model.safetensors").exists()),
    reason=f"base model not prepared at {REAL_MODEL} (run `make model`)",
)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def tiny_tokenizer(corpus: list[str], vocab_size: int = 400) -> PreTrainedTokenizerBase:
    """Byte-level BPE trained on `corpus`; eos is <|im_end|>, no pad token, ChatML template."""
    return bpe_chat_tokenizer(corpus, vocab_size)  # type: ignore[no-any-return]


def save_tiny_llama(model_dir: Path, tok: PreTrainedTokenizerBase) -> Path:
    """A random 2-layer Llama (seed 0) sized for `tok`, saved with it at model_dir."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir
