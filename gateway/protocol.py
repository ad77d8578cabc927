"""Response models of Tailor's own routes, and the bodies of its admin API.

Completion request bodies, and what of them reaches the engine, are gateway.request_policy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    # Only on a page asked for with `after` or `limit` (the ids only when it has entries);
    # a plain listing is OpenAI's bare list.
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool | None = None


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


# --- admin API -----------------------------------------------------------------


class TenantCreate(BaseModel):
    name: str


class TenantOut(BaseModel):
    id: str
    name: str
    created_at: datetime


class KeyCreate(BaseModel):
    name: str | None = None
    expires_at: datetime | None = None


class KeyOut(BaseModel):
    id: str
    tenant_id: str
    hint: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret. Shown only in this response; Tailor keeps a hash.")


class AdapterVersionOut(BaseModel):
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


class AdapterOut(BaseModel):
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


class VersionLineageOut(BaseModel):
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


class EngineOut(BaseModel):
    url: str
    healthy: bool
    inflight: int
    resident_adapters: int
    loads: int
    evictions: int
