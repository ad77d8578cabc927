"""adapter_config.json: a plain LoRA the serving engine can apply, within its rank limit."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base_model import BaseModelSpec
from .files import CONFIG_FILE
from .refusals import EMBEDDING_MODULES, check_rank, embedding_message, invalid

# init_lora_weights values that only seed training; anything else (pissa, olora, loftq,
# corda) rewrites base weights when peft loads the adapter, which vLLM cannot reproduce.
_PLAIN_INITS = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})


@dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: float
    allowed_ranks: frozenset[int]
    base_model_name_or_path: str | None


def read_lora_config(config_path: Path, *, base: BaseModelSpec, max_rank: int) -> LoraConfig:
    try:
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise invalid(f"{CONFIG_FILE} must be a JSON object")
    if config.get("peft_type") != "LORA":
        raise invalid(
            f"{CONFIG_FILE} has peft_type {config.get('peft_type')!r}; only LoRA adapters "
            f'(peft_type "LORA") are supported'
        )
    rank = config.get("r")
    if not _is_int(rank) or rank < 1:
        raise invalid(f"{CONFIG_FILE} needs an integer rank r >= 1, got {rank!r}")
    check_rank(rank, max_rank)
    alpha = config.get("lora_alpha")
    if not _is_number(alpha) or alpha <= 0:
        raise invalid(f"{CONFIG_FILE} needs a positive number lora_alpha, got {alpha!r}")
    pattern_ranks = _rank_pattern(config.get("rank_pattern"), max_rank)
    _check_alpha_pattern(config.get("alpha_pattern"))
    _check_target_modules(config.get("target_modules"), base)
    _refuse_unsupported_features(config)
    base_name = config.get("base_model_name_or_path")
    return LoraConfig(
        rank=rank,
        alpha=float(alpha),
        allowed_ranks=frozenset({rank, *pattern_ranks}),
        base_model_name_or_path=base_name if isinstance(base_name, str) else None,
    )


def _rank_pattern(value: Any, max_rank: int) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise invalid(f"{CONFIG_FILE} rank_pattern must be an object of module pattern -> rank")
    ranks = []
    for key, rank in value.items():
        if not _is_int(rank) or rank < 1:
            raise invalid(f"{CONFIG_FILE} rank_pattern[{key!r}] must be an integer >= 1, got {rank!r}")
        check_rank(rank, max_rank)
        ranks.append(rank)
    return ranks


def _check_alpha_pattern(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(_is_number(a) for a in value.values()):
        raise invalid(f"{CONFIG_FILE} alpha_pattern must be an object of module pattern -> number")


def _check_target_modules(value: Any, base: BaseModelSpec) -> None:
    # A string is a regex peft matched at training time; the tensors say what it matched.
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise invalid(f"{CONFIG_FILE} target_modules must be a non-empty list of module names")
    for module in value:
        suffix = module.rsplit(".", 1)[-1]
        if suffix in EMBEDDING_MODULES:
            raise invalid(embedding_message(module))
        if suffix not in base.module_shapes:
            raise invalid(
                f"target module {module!r} is not a projection of base model {base.name}; "
                f"allowed: {', '.join(base.module_shapes)}"
            )


def _refuse_unsupported_features(config: Mapping[str, Any]) -> None:
    # Each of these loads in peft but would be silently wrong (or fail) on vLLM.
    modules_to_save = config.get("modules_to_save")
    if modules_to_save:
        raise invalid(
            f"modules_to_save ({modules_to_save}) is not supported: the engine serves LoRA on "
            f"the attention and MLP projections only, not fully trained embeddings or heads"
        )
    if config.get("trainable_token_indices"):
        raise invalid(embedding_message("trainable_token_indices"))
    if config.get("use_dora"):
        raise invalid("DoRA adapters (use_dora: true) are not supported; train a plain LoRA")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise invalid('LoRA bias terms are not supported; train with bias="none"')
    for key, what in (
        ("layer_replication", "layer_replication"),
        ("alora_invocation_tokens", "Activated LoRA (alora_invocation_tokens)"),
        ("use_qalora", "QALoRA (use_qalora)"),
    ):
        if config.get(key):
            raise invalid(f"{what} is not supported by the serving engine")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in _PLAIN_INITS:
        raise invalid(
            f"init_lora_weights={init!r} rewrites base model weights when loaded, which the "
            f"engine cannot do; convert the adapter to a plain LoRA first"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
