"""The operator API's bodies: tenants, their keys, the engines."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from gateway.protocol.wire import WireModel, attributes
from gateway.tenants import NewKey


class TenantCreate(BaseModel):
    name: str


class TenantOut(WireModel):
    id: str
    name: str
    created_at: datetime


class KeyCreate(BaseModel):
    name: str | None = None
    expires_at: datetime | None = None


class KeyOut(WireModel):
    id: str
    tenant_id: str
    hint: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret. Shown only in this response; Tailor keeps a hash.")

    @classmethod
    def of(cls, new: NewKey) -> KeyCreated:
        return cls.model_validate({**attributes(new.info), "key": new.secret})


class EngineOut(WireModel):
    url: str
    healthy: bool
    inflight: int
    resident_adapters: int
    loads: int
    evictions: int
