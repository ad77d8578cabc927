"""A tenant's rate limits and quotas (`/v1/limits`, `/admin/tenants/{tenant}/limits`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

_LIMIT = Field(None, ge=1, le=10**15)


class LimitsIn(BaseModel):
    """The tenant's limits, all at once; an omitted or null field is no limit."""

    model_config = ConfigDict(extra="forbid", strict=True)

    requests_per_minute: int | None = _LIMIT
    tokens_per_minute: int | None = _LIMIT
    tokens_per_day: int | None = Field(None, ge=1, le=10**15, description="Quota per UTC day.")
    tokens_per_month: int | None = Field(None, ge=1, le=10**15, description="Quota per UTC calendar month.")
    max_stored_bytes: int | None = Field(
        None, ge=1, le=10**15, description="Bytes of adapter versions and files kept; null: the operator's default."
    )
    max_adapter_versions: int | None = Field(
        None, ge=1, le=10**9, description="Adapter versions kept; null: the operator's default."
    )
    max_files: int | None = Field(None, ge=1, le=10**9, description="Files kept; null: the operator's default.")
    max_queued_jobs: int | None = Field(
        None, ge=1, le=10**6, description="Fine-tuning jobs waiting at once; null: the operator's default."
    )


class LimitsOut(BaseModel):
    object: str = "tenant.limits"
    tenant: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    tokens_per_day: int | None
    tokens_per_month: int | None
    max_stored_bytes: int | None = Field(description="The tenant's own value; null: the operator's default.")
    max_adapter_versions: int | None
    max_files: int | None
    max_queued_jobs: int | None
    quotas: dict[str, int] = Field(
        description="The storage and queue quotas that apply: the tenant's own value, else the operator's default."
    )
    used: dict[str, int] = Field(
        description="Requests and tokens counted in the current minute, day and month; stored_bytes, "
        "adapter_versions, files and queued_jobs as they are now."
    )
