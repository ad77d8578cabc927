"""OpenAI request shapes accepted by Tailor, and the response models of its own routes.

Requests are validated here for clear 400s on the fields Tailor relies on; every other
field is passed to the engine untouched (extra="allow"), so new sampling parameters work
without a Tailor release.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=256)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=16)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1, le=16)] | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


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
