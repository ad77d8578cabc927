"""The refusals the config and the tensor checks share, in one wording."""

from __future__ import annotations

from core.errors import TailorError, bad_request

from .base_model import MODULE_BLOCKS

EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out")


def invalid(message: str) -> TailorError:
    return bad_request(message, code="invalid_adapter")


def check_rank(rank: int, max_rank: int) -> None:
    if rank > max_rank:
        raise bad_request(f"rank {rank} exceeds the engine's maximum {max_rank}", code="adapter_rank_too_high")


def embedding_message(what: str) -> str:
    return (
        f"{what}: LoRA on embeddings or the LM head is not supported by the serving engine; "
        f"target only {', '.join(MODULE_BLOCKS)}"
    )
