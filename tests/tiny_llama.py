"""The tiny Llama the adapter and gateway tests validate adapters against: its sizes and the
`config.json` such a base model directory holds (no weights: validation reads the config)."""

from __future__ import annotations

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, LAYERS = 16, 32, 4, 2, 2
TINY_CONFIG: dict[str, object] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "num_hidden_layers": LAYERS,
    "vocab_size": 64,
}
