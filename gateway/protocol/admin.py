"""The operator API's bodies: tenants, their keys, the engines."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from gateway.protocol.wire import WireModel, attributes, wire_model
from gateway.tenants import KeyInfo, NewKey, TenantInfo


class TenantCreate(BaseModel):
    name: str


TenantOut = wire_model("TenantOut", TenantInfo)


class KeyCreate(BaseModel):
    name: str | None = None
    expires_at: datetime | None = None


KeyOut = wire_model("KeyOut", KeyInfo)


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
