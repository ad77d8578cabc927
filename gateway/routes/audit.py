"""The audit log: any tenant's events for operators (`/admin/audit`), a tenant's own (`/v1/audit`).

Lists are newest first and paged by event id like OpenAI's lists: `after` is the last id
of the previous page (older events), `before` the first (newer events). `format=csv`
gives the same page as CSV when `limit` is set, and every matching event when it is not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response, StreamingResponse

from core.errors import TailorError
from gateway import audit, tenants
from gateway.deps import AdminDep, CallerDep, ServicesDep
from gateway.protocol.audit import AuditEventList, AuditEventOut
from gateway.protocol.exports import CSV_RESPONSES, FORMAT_QUERY, Format
from gateway.protocol.wire import page_ids
from gateway.services import Services

router = APIRouter(tags=["audit"])
admin_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])


_ACTION = Query(None, description='Exact ("adapter.promote"), or a prefix ending in "." ("adapter.").')
_ACTOR = Query(None, description='"admin", "key:<key id>" or "cli:<user>".')
_SINCE = Query(None, description="Events at or after this time (ISO 8601; no zone: UTC).")
_UNTIL = Query(None, description="Events before this time (ISO 8601; no zone: UTC).")
_AFTER = Query(None, ge=-(2**63), le=2**63 - 1, description="Event id: the page after it (older events).")
_BEFORE = Query(None, ge=-(2**63), le=2**63 - 1, description="Event id: the page before it (newer events).")
_LIMIT = Query(
    None, ge=1, le=audit.MAX_LIMIT, description="Events per page (JSON default 100); CSV without it: all of them."
)


@dataclass(frozen=True)
class Listing:
    """What both routes take from the query: which events (but for the tenant), and how."""

    events: audit.Filter
    limit: int | None
    fmt: Format


def _listing(
    action: str | None = _ACTION,
    actor: str | None = _ACTOR,
    since: datetime | None = _SINCE,
    until: datetime | None = _UNTIL,
    after: int | None = _AFTER,
    before: int | None = _BEFORE,
    limit: int | None = _LIMIT,
    fmt: Format = FORMAT_QUERY,
) -> Listing:
    events = audit.Filter(action=action, actor=actor, since=since, until=until, older_than=after, newer_than=before)
    return Listing(events, limit, fmt)


ListingDep = Annotated[Listing, Depends(_listing)]


def listing(services: Services, q: Listing, *, tenant_id: str | None, filename: str) -> AuditEventList | Response:
    """The one implementation behind both routes."""
    f = replace(q.events, tenant_id=tenant_id)
    if q.fmt == "csv":
        # Without a limit, an export of everything that matches, read in batches as it streams.
        events: Iterable[audit.Event] = (
            audit.iter_events(services.db, f) if q.limit is None else audit.query(services.db, f, limit=q.limit).events
        )
        return StreamingResponse(
            audit.csv_lines(events),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{filename}.csv"'},
        )
    page = audit.query(services.db, f, limit=q.limit or audit.DEFAULT_LIMIT)
    data = [AuditEventOut.model_validate(e) for e in page.events]
    return AuditEventList(data=data, **page_ids(data), has_more=page.has_more)


def _tenant_id(services: Services, tenant: str) -> str:
    """A tenant's id by name or id; an id that only the log still knows is a deleted tenant's."""
    try:
        return tenants.find_tenant(services.db, tenant).id
    except TailorError as exc:
        if exc.status == 404 and audit.has_events(services.db, tenant):
            return tenant
        raise


@router.get(
    "/v1/audit",
    response_model=AuditEventList,
    responses=CSV_RESPONSES,
    summary="What was done to your tenant's setup, by whom and when, newest first",
)
def get_own_audit(services: ServicesDep, caller: CallerDep, q: ListingDep) -> AuditEventList | Response:
    return listing(services, q, tenant_id=caller.tenant_id, filename=f"audit-{caller.tenant_name}")


@admin_router.get(
    "/audit",
    response_model=AuditEventList,
    responses=CSV_RESPONSES,
    summary="The audit log of every tenant, or of one (`tenant`: name, id, or a deleted tenant's id)",
)
def get_audit(
    services: ServicesDep,
    q: ListingDep,
    tenant: str | None = Query(None, description="Tenant name or id; a deleted tenant's id works too."),
) -> AuditEventList | Response:
    tenant_id = _tenant_id(services, tenant) if tenant else None
    return listing(services, q, tenant_id=tenant_id, filename=f"audit-{tenant_id}" if tenant_id else "audit")
