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


BASE_MODEL_FIELD = "The base model (a name GET /v1/models lists) the adapter is for; default: the first one."


class AdapterRegisterPath(BaseModel):
    name: str
    path: str = Field(description="A PEFT adapter directory readable by the gateway.")
    activate: bool = True
    base_model: str | None = Field(default=None, description=BASE_MODEL_FIELD)


class ActivateVersion(BaseModel):
    version: int


class MergeStart(BaseModel):
    version: int | None = Field(default=None, description="The adapter version to merge; the active one if omitted.")
    activate: bool = Field(default=False, description="Serve the merged model as the name once it is registered.")


# model_validate(trainer.merge.MergeInfo)
class MergeOut(WireModel):
    id: str
    object: str = "adapter.merge"
    adapter_name: str
    source_version: int
    activate: bool
    # queued | running | succeeded | failed | cancelled
    status: str
    model: str | None = Field(description="The merged model, `name@vN`, once the merge succeeded.")
    version: int | None = Field(description="The merged model's version number, once the merge succeeded.")
    metrics: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    finished_at: datetime | None
