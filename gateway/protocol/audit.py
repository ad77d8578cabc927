"""Audit log events (`/v1/audit`, `/admin/audit`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from gateway.protocol.wire import WireModel


# model_validate(gateway.audit.Event)
class AuditEventOut(WireModel):
    object: Literal["audit.event"] = "audit.event"
    id: int
    at: datetime
    actor: str
    tenant_id: str | None
    action: str
    target: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditEventOut]
    first_id: int | None
    last_id: int | None
    has_more: bool
