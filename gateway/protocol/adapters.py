"""Adapters, their versions and lineage (`/v1/adapters`, and the same under `/admin`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from adapters.promotion import VersionLineage
from adapters.registry import VersionInfo
from gateway.protocol.wire import WireModel, wire_model
from trainer.merge import MergeInfo

# The vocabularies (state; kind: "adapter", a LoRA on the base model, or "model", a full model on
# engines of its own) are plain strings on the wire.
AdapterVersionOut = wire_model(
    "AdapterVersionOut", VersionInfo, omit=("adapter_name", "base_model"), state=str, kind=(str, "adapter")
)


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


VersionLineageOut = wire_model(
    "VersionLineageOut", VersionLineage, state=str, metrics=dict[str, Any] | None, kind=(str, "adapter")
)


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


MergeOut = wire_model(
    "MergeOut",
    MergeInfo,
    lead=("id",),
    object=(str, "adapter.merge"),
    status=str,  # queued | running | succeeded | failed | cancelled
    model=(str | None, Field(description="The merged model, `name@vN`, once the merge succeeded.")),
    version=(int | None, Field(description="The merged model's version number, once the merge succeeded.")),
)
