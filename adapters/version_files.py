"""What a version directory holds, judged by its kind: a PEFT adapter or a full model.

A directory with `adapter_config.json` is an adapter (adapters.validation, against the base
model); one with only a `config.json` is a complete checkpoint (adapters.model_validation),
served by engines of its own. Registration (adapters.registry) records either the same way.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from adapters.model_validation import is_model_dir, validate_model_dir
from adapters.validation import BaseModelSpec, validate_adapter_dir
from adapters.validation.refusals import invalid
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
    path: Path,
    *,
    base: BaseModelSpec,
    max_rank: int,
    max_bytes: int,
    max_model_bytes: int,
    other_bases: Collection[str] = (),
) -> VersionFiles:
    """Accept `path` as an adapter or a full model, or raise a 400 saying why not. An adapter
    whose config names one of `other_bases` (other configured base models) is refused: shapes
    alone do not tell a 15-layer model's adapter from one for the first 15 layers of another."""
    if is_model_dir(path):
        model = validate_model_dir(path, max_bytes=max_model_bytes)
        return VersionFiles(VersionKind.MODEL, 0, 0.0, (), model.architecture, model.total_bytes)
    adapter = validate_adapter_dir(path, base=base, max_rank=max_rank, max_bytes=max_bytes)
    made_for = PurePosixPath(adapter.base_model_name_or_path or "").name
    if made_for and made_for in other_bases:
        raise invalid(
            f"adapter_config.json says the adapter was made for base model {made_for!r} (base_model_name_or_path), "
            f"another base than {base.name!r}: register it for the base it was made for (base_model)"
        )
    return VersionFiles(
        VersionKind.ADAPTER, adapter.rank, adapter.alpha, adapter.target_modules, base.name, adapter.total_bytes
    )
