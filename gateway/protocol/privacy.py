"""A tenant's privacy settings and purge (`/admin/tenants/{tenant}/privacy`, `.../purge`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_RETENTION_DAYS = 36_500


class PrivacyIn(BaseModel):
    """Fields to change; omitted ones keep their value. `retention_days: null` keeps data until deleted."""

    model_config = ConfigDict(extra="forbid", strict=True)

    retention_days: int | None = Field(
        None, ge=1, le=MAX_RETENTION_DAYS, description="Interactions and feedback older than this are deleted."
    )
    redact_pii: bool | None = Field(
        None, description="Store interactions and feedback with e-mails, phone and card numbers, ... redacted."
    )


class PrivacyOut(BaseModel):
    object: Literal["tenant.privacy"] = "tenant.privacy"
    tenant: str
    retention_days: int | None
    redact_pii: bool


class PurgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    confirm: str = Field(description="The tenant's name, exactly: a guard against purging the wrong one.")


class PurgeOut(BaseModel):
    object: Literal["tenant.purge"] = "tenant.purge"
    id: str
    name: str
    purged: bool = True
    rows: dict[str, int] = Field(description="Rows deleted per table.")
    blobs: int
    adapter_objects: int = Field(description="Adapter versions deleted from the adapter store.")
    shared_adapter_objects: int = Field(description="Kept: the same files serve another tenant's version.")
    evicted: int = Field(description="Adapters unloaded from engines.")
