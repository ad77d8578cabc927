"""What a version directory holds, judged by its kind: a PEFT adapter or a full model.

A directory with `adapter_config.json` is an adapter (adapters.validation, against the base
model); one with only a `config.json` is a complete checkpoint (adapters.model_validation),
served by engines of its own. Registration (adapters.registry) records either the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters.model_validation import is_model_dir, validate_model_dir
from adapters.validation import BaseModelSpec, validate_adapter_dir
from core.states import VersionKind


@dataclass(frozen=True)
class VersionFiles:
    kind: VersionKind
    rank: int  # 0 for a model: nothing to fit into an engine's --max-lora-rank
    alpha: float
    target_modules: tuple[str, ...]
    # For an adapter the base model it fits; for a model its own architecture.
    base_model: str
    total_bytes: int


def validate_version_dir(
    path: Path, *, base: BaseModelSpec, max_rank: int, max_bytes: int, max_model_bytes: int
) -> VersionFiles:
    """Accept `path` as an adapter or a full model, or raise a 400 saying why not."""
    if is_model_dir(path):
        model = validate_model_dir(path, max_bytes=max_model_bytes)
        return VersionFiles(VersionKind.MODEL, 0, 0.0, (), model.architecture, model.total_bytes)
    adapter = validate_adapter_dir(path, base=base, max_rank=max_rank, max_bytes=max_bytes)
    return VersionFiles(
        VersionKind.ADAPTER, adapter.rank, adapter.alpha, adapter.target_modules, base.name, adapter.total_bytes
    )
