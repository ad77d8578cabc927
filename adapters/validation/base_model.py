"""The base model an adapter must fit: its layer count and each projection's (in, out) features."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from core.errors import TailorError

# Which decoder block each projection lives in, as HF Llama/Mistral/Qwen2 name them.
MODULE_BLOCKS: Mapping[str, str] = MappingProxyType(
    {
        "q_proj": "self_attn",
        "k_proj": "self_attn",
        "v_proj": "self_attn",
        "o_proj": "self_attn",
        "gate_proj": "mlp",
        "up_proj": "mlp",
        "down_proj": "mlp",
    }
)


@dataclass(frozen=True)
class BaseModelSpec:
    """What an adapter must fit: layer count and each projection's (in, out) features."""

    name: str
    num_layers: int
    module_shapes: Mapping[str, tuple[int, int]] = field(hash=False)

    def __post_init__(self) -> None:
        # Frozen means frozen: callers must not be able to add a module after validation.
        object.__setattr__(self, "module_shapes", MappingProxyType(dict(self.module_shapes)))

    @classmethod
    def from_config_dir(cls, path: Path | str) -> BaseModelSpec:
        """Read a HF `config.json` (Llama, Mistral, Qwen2 and alike)."""
        path = Path(path)
        config = _read_base_config(path / "config.json")
        hidden = _config_int(config, "hidden_size", path)
        intermediate = _config_int(config, "intermediate_size", path)
        heads = _config_int(config, "num_attention_heads", path)
        kv_heads = _config_int(config, "num_key_value_heads", path, default=heads)
        # Mistral writes head_dim: null; that means the classic hidden_size // heads.
        head_dim = _config_int(config, "head_dim", path, default=hidden // heads)
        layers = _config_int(config, "num_hidden_layers", path)
        q_out, kv_out = heads * head_dim, kv_heads * head_dim
        shapes = {
            "q_proj": (hidden, q_out),
            "k_proj": (hidden, kv_out),
            "v_proj": (hidden, kv_out),
            "o_proj": (q_out, hidden),
            "gate_proj": (hidden, intermediate),
            "up_proj": (hidden, intermediate),
            "down_proj": (intermediate, hidden),
        }
        return cls(name=path.resolve().name, num_layers=layers, module_shapes=shapes)


def _read_base_config(config_path: Path) -> dict[str, Any]:
    # A broken base model is the operator's problem, not the uploader's: 500, not 400.
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _base_error(f"base model config {config_path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _base_error(f"base model config {config_path} is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise _base_error(f"base model config {config_path} is not a JSON object")
    # Multimodal wrappers keep the language model's numbers under text_config.
    text_config = config.get("text_config")
    if "hidden_size" not in config and isinstance(text_config, dict):
        return text_config
    return config


def _config_int(config: Mapping[str, Any], key: str, path: Path, default: int | None = None) -> int:
    value = config.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _base_error(f"base model config in {path} needs a positive integer {key}, got {value!r}")
    return value


def _base_error(message: str) -> TailorError:
    return TailorError(500, message, code="base_model_invalid")
