"""Randomly initialised Llama models with a chat tokenizer, built from a config: no download.

For speed and memory checks where no weights can be fetched (GPU hosts without a network,
CI): the shapes of well-known models, random weights, and a byte-level BPE tokenizer with a
ChatML template trained on a generated corpus. What a model says is noise; what it costs
to train is that of the real architecture.

    python -m trainer.compute.synthetic OUT_DIR --config llama-1b
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama shapes by name. llama-1b is TinyLlama-1.1B's (22 layers, GQA 32/4), llama-8b is
# Llama-3-8B's with a 32k vocabulary; tiny is for tests.
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=32000),
}  # fmt: skip


def words(n: int, seed: int = 0) -> list[str]:
    """n pronounceable pseudo-words, the same for the same seed."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(n)]


def bpe_chat_tokenizer(corpus: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer trained on `corpus`: eos <|im_end|>, no pad, ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def chat_tokenizer(vocab_size: int, seed: int = 0) -> Any:
    """bpe_chat_tokenizer trained on generated words, at most vocab_size tokens."""
    corpus = words(20_000, seed)
    return bpe_chat_tokenizer((" ".join(corpus[i : i + 50]) for i in range(0, len(corpus), 50)), vocab_size)


def build(out_dir: Path, config: str = "tiny", *, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """Save a random Llama of shape `config` and its tokenizer at out_dir (Hugging Face layout)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = CONFIGS[config]
    tok = chat_tokenizer(min(shape["vocab_size"], 8000), seed)
    torch.manual_seed(seed)
    model_config = LlamaConfig(
        **{**shape, "vocab_size": max(shape["vocab_size"], len(tok))},
        max_position_embeddings=4096,
        tie_word_embeddings=config == "tiny",
        eos_token_id=tok.eos_token_id,
        torch_dtype=dtype,
    )
    # Built in the target precision: an 8B model initialised in float32 would take 32 GB.
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        model = LlamaForCausalLM(model_config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args(argv)
    build(args.out_dir, args.config, dtype=args.dtype)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
