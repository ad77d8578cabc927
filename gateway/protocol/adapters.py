"""Adapters, their versions and lineage (`/v1/adapters`, and the same under `/admin`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from gateway.protocol.wire import WireModel


class AdapterVersionOut(WireModel):
    id: str
    version: int
    digest: str
    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int
    state: str
    source: str
    active: bool
    created_at: datetime
    # "adapter" (a LoRA on the base model) or "model" (a full model on engines of its own).
    kind: str = "adapter"


# model_validate(adapters.registry.AdapterInfo); no docstring: it would be the schema's description.
class AdapterOut(WireModel):
    id: str
    name: str
    active_version: int | None
    canary_version: int | None = None
    canary_fraction: float = 0.0
    versions: list[AdapterVersionOut]
    created_at: datetime


class CanaryStart(BaseModel):
    version: int
    fraction: float = Field(gt=0, lt=1, description="Share of this name's requests sent to the canary.")


# model_validate(adapters.promotion.VersionLineage)
class VersionLineageOut(WireModel):
    version: int
    id: str
    state: str
    source: str
    digest: str
    job_id: str | None
    dataset_id: str | None
    parent_version_id: str | None
    metrics: dict[str, Any] | None
    created_at: datetime
    promoted_at: datetime | None
    promoted_by: str | None
    serving: str | None
    kind: str = "adapter"


class AdapterRegisterPath(BaseModel):
    name: str
    path: str = Field(description="A PEFT adapter directory readable by the gateway.")
    activate: bool = True


class ActivateVersion(BaseModel):
    version: int
