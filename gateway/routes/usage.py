"""Metering: a tenant's own usage (`/v1/usage`), any tenant's (`/admin/usage`), and how
each version of an adapter serves and is judged (`/v1/adapters/{name}/stats`)."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Query
from starlette.responses import Response

from core.errors import bad_request
from gateway import prices, tenants, usage
from gateway.deps import AdminDep, CallerDep, ServicesDep
from gateway.protocol.exports import CSV_RESPONSES, FORMAT_QUERY, Format
from gateway.protocol.usage import UsageList, VersionStatsList
from gateway.services import Services

router = APIRouter(tags=["usage"])
admin_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])


def _last_day(until: date | None) -> date | None:
    """`until`, refused on the last representable day: a range ends at the start of the day after `until`."""
    if until == date.max:
        raise bad_request(f"'until' must be before {date.max.isoformat()}.", param="until")
    return until


def report(
    services: Services,
    *,
    tenant_id: str | None,
    since: date | None,
    until: date | None,
    group_by: str,
    fmt: Format,
    filename_prefix: str,
) -> UsageList | Response:
    """The one implementation behind both usage routes."""
    default_since, default_until = usage.default_range()
    until = _last_day(until) or default_until
    # A lone `until` keeps the default window length, ending there (and starting no earlier than 0001-01-01).
    since = since or until - min(default_until - default_since, until - date.min)
    groups = usage.parse_group_by(group_by)
    rows = usage.usage(
        services.db,
        tenant_id=tenant_id,
        since=since,
        until=until,
        group_by=groups,
        prices=prices.prices_from_settings(services.settings),
    )
    if fmt == "csv":
        return Response(
            usage.to_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{filename_prefix}-{since}-{until}.csv"'},
        )
    return UsageList(
        since=since,
        until=until,
        group_by=list(groups),
        data=rows,
        totals=usage.totals(rows),
    )


_SINCE = Query(None, description="First UTC day (YYYY-MM-DD), inclusive; default: 30 days up to `until`.")
_UNTIL = Query(None, description="Last UTC day (YYYY-MM-DD), inclusive; default: today.")
_GROUP_BY = Query(
    ",".join(usage.DEFAULT_GROUP_BY),
    description="Comma-separated subset of day,model,version,tier (tier: interactive or batch requests).",
)


@router.get(
    "/v1/usage",
    response_model=UsageList,
    responses=CSV_RESPONSES,
    summary="Your requests, tokens, latency, errors and cost per day, model, adapter version and tier "
    "(interactive or batch)",
)
def get_own_usage(
    services: ServicesDep,
    caller: CallerDep,
    since: date | None = _SINCE,
    until: date | None = _UNTIL,
    group_by: str = _GROUP_BY,
    fmt: Format = FORMAT_QUERY,
) -> UsageList | Response:
    return report(
        services,
        tenant_id=caller.tenant_id,
        since=since,
        until=until,
        group_by=group_by,
        fmt=fmt,
        filename_prefix=f"usage-{caller.tenant_name}",
    )


@router.get(
    "/v1/adapters/{name}/stats",
    response_model=VersionStatsList,
    summary="Per version of an adapter (active and canary apart): traffic, errors, latency, feedback",
)
def get_adapter_stats(
    name: str,
    services: ServicesDep,
    caller: CallerDep,
    since: date | None = Query(None, description="First UTC day, inclusive; default: all time."),
    until: date | None = Query(None, description="Last UTC day, inclusive; default: all time."),
) -> VersionStatsList:
    stats = usage.version_stats(services.db, caller.tenant_id, name, since=since, until=_last_day(until))
    return VersionStatsList(adapter=name, data=stats)


@admin_router.get(
    "/usage",
    response_model=UsageList,
    responses=CSV_RESPONSES,
    summary="Usage across tenants, or of one tenant (`tenant`: name or id)",
)
def get_usage(
    services: ServicesDep,
    tenant: str | None = Query(None, description="Tenant name or id; default: every tenant."),
    since: date | None = _SINCE,
    until: date | None = _UNTIL,
    group_by: str = _GROUP_BY,
    fmt: Format = FORMAT_QUERY,
) -> UsageList | Response:
    found = tenants.find_tenant(services.db, tenant) if tenant else None
    return report(
        services,
        tenant_id=found.id if found else None,
        since=since,
        until=until,
        group_by=group_by,
        fmt=fmt,
        filename_prefix=f"usage-{found.name}" if found else "usage",
    )
