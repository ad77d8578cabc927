"""One adapter directory judged whole: its files, its config and its tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import bad_request

from .base_model import BaseModelSpec
from .files import CONFIG_FILE, WEIGHTS_FILE, list_adapter_files, read_safetensors_header
from .lora_config import read_lora_config
from .tensors import check_tensors


@dataclass(frozen=True)
class AdapterManifest:
    """What Tailor learned about an accepted adapter."""

    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model_name_or_path: str | None
    files: tuple[str, ...]
    total_bytes: int


def validate_adapter_dir(path: Path | str, *, base: BaseModelSpec, max_rank: int, max_bytes: int) -> AdapterManifest:
    """Accept a PEFT LoRA adapter directory for `base`, or raise a 400 saying why not."""
    path = Path(path)
    sizes = list_adapter_files(path)
    total = sum(sizes.values())
    if total > max_bytes:
        raise bad_request(
            f"adapter is {total} bytes; the largest accepted adapter is {max_bytes} bytes",
            code="adapter_too_large",
        )
    config = read_lora_config(path / CONFIG_FILE, base=base, max_rank=max_rank)
    headers = read_safetensors_header(path / WEIGHTS_FILE)
    ranks = check_tensors(headers, base=base, config=config, max_rank=max_rank)
    return AdapterManifest(
        rank=max([config.rank, *config.allowed_ranks, *ranks.values()]),
        alpha=config.alpha,
        target_modules=tuple(sorted({module for _, module in ranks})),
        base_model_name_or_path=config.base_model_name_or_path,
        files=tuple(sorted(sizes)),
        total_bytes=total,
    )
