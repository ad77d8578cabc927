"""Audit log events (`/v1/audit`, `/admin/audit`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from gateway.audit import Event
from gateway.protocol.wire import wire_model

AuditEventOut = wire_model("AuditEventOut", Event, object=(Literal["audit.event"], "audit.event"))


class AuditEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AuditEventOut]
    first_id: int | None
    last_id: int | None
    has_more: bool
