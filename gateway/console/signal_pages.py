"""The pages of what traffic says: a tenant's feedback (drift, recent items, filters) and
cost and latency per day, for one tenant or, for operators, all of them."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Query, Request
from starlette.responses import HTMLResponse

from adapters import registry
from gateway import tenants
from gateway.tenants import TenantInfo

from . import queries, views
from .access import Tenant, User, get_tenant
from .pages import console_router, render, services_of

router = console_router()

COST_DAYS = (7, 30, 90)


@router.get("/tenants/{tenant}/feedback")
def feedback_page(
    request: Request,
    user: User,
    owner: Tenant,
    adapter: Annotated[str, Query(max_length=64)] = "",
    rating: Annotated[str, Query(max_length=8)] = "",
    correction: Annotated[str, Query(max_length=8)] = "",
) -> HTMLResponse:
    services = services_of(request)
    filters = queries.FeedbackFilter(
        adapter=adapter or None,
        rating=rating if rating in ("good", "bad") else None,
        correction=correction if correction in ("yes", "no") else None,
    )
    signal = queries.signal_by_day(services, owner.id)
    return render(
        request,
        "feedback.html",
        user,
        nav="feedback",
        tenant=owner,
        filters=filters,
        items=queries.recent_feedback(services, owner.id, filters),
        page_size=queries.FEEDBACK_PAGE,
        adapters=registry.list_adapters(services.db, owner.id),
        drift=queries.drift_all(services, owner.id),
        signal_chart=views.signal_chart(signal.series, signal.days) if signal.series else None,
    )


@router.get("/cost")
def cost_page(
    request: Request,
    user: User,
    tenant: Annotated[str, Query(max_length=64)] = "",
    days: Annotated[int, Query()] = 30,
) -> HTMLResponse:
    services = services_of(request)
    days = days if days in COST_DAYS else 30
    if not user.is_admin:
        scope: list[TenantInfo] | None = [tenants.find_tenant(services.db, user.tenant_id or "")]
    elif tenant:
        scope = [get_tenant(tenant, request, user)]
    else:
        scope = None
    until = queries.today()
    since = until - timedelta(days=days - 1)
    data = queries.cost(services, scope, since, until)
    labels = views.day_labels(since, until)
    multi = scope is None
    cost_chart, tokens_chart = views.cost_charts(data.by_day_model, labels, with_tenant=multi)
    return render(
        request,
        "cost.html",
        user,
        nav="cost",
        tenant=scope[0] if scope and user.is_admin else None,
        scope_name=scope[0].name if scope else None,
        all_tenants=tenants.list_tenants(services.db) if user.is_admin else [],
        days=days,
        data=data,
        multi=multi,
        cost_chart=cost_chart,
        tokens_chart=tokens_chart,
        latency_chart=views.latency_chart(data.by_day, labels, with_tenant=multi),
    )
