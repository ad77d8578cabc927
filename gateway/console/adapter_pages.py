"""An adapter's page (versions, lineage, traffic, drift) and what changes what it serves:
promote, start or stop a canary, roll back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Form, Request
from starlette.responses import HTMLResponse, Response

from adapters import promotion
from adapters.registry import AdapterInfo
from core.errors import TailorError
from gateway.tenants import TenantInfo

from . import queries
from .access import Poster, Tenant, User
from .auth import ConsoleUser
from .pages import console_router, redirect, render, services_of

router = console_router()


def _adapter_page(
    request: Request, user: ConsoleUser, owner: TenantInfo, name: str, *, status: int = 200, error: str | None = None
) -> HTMLResponse:
    detail = queries.adapter_detail(services_of(request), owner.id, name)
    return render(request, "adapter.html", user, status=status, nav="tenant", tenant=owner, detail=detail, error=error)


@router.get("/tenants/{tenant}/adapters/{name}")
def adapter_page(request: Request, user: User, owner: Tenant, name: str) -> HTMLResponse:
    return _adapter_page(request, user, owner, name)


def _change_adapter(
    request: Request,
    user: ConsoleUser,
    owner: TenantInfo,
    name: str,
    action: str,
    change: Callable[..., AdapterInfo],
    *args: Any,
) -> Response:
    """Run one promotion call as `change(db, tenant id, name, *args, actor=...)`, audited by the
    call itself as in the API, and show the adapter again."""
    services = services_of(request)
    try:
        change(services.db, owner.id, name, *args, actor=user.actor)
    except TailorError as exc:  # a refused change (no such version, nothing to roll back to; unknown names: 404)
        return _adapter_page(request, user, owner, name, status=exc.status, error=exc.message)
    services.changed()
    return redirect(request, f"/tenants/{owner.name}/adapters/{name}?done={action}")


@router.post("/tenants/{tenant}/adapters/{name}/promote")
def promote(request: Request, user: Poster, owner: Tenant, name: str, version: Annotated[int, Form()]) -> Response:
    return _change_adapter(request, user, owner, name, "adapter.promote", promotion.promote, version)


@router.post("/tenants/{tenant}/adapters/{name}/canary")
def start_canary(
    request: Request,
    user: Poster,
    owner: Tenant,
    name: str,
    version: Annotated[int, Form()],
    percent: Annotated[float, Form(gt=0, lt=100)],
) -> Response:
    share = percent / 100  # of the traffic, as a fraction
    return _change_adapter(request, user, owner, name, "adapter.canary.start", promotion.start_canary, version, share)


@router.post("/tenants/{tenant}/adapters/{name}/canary/stop")
def stop_canary(request: Request, user: Poster, owner: Tenant, name: str) -> Response:
    return _change_adapter(request, user, owner, name, "adapter.canary.stop", promotion.stop_canary)


@router.post("/tenants/{tenant}/adapters/{name}/rollback")
def rollback(request: Request, user: Poster, owner: Tenant, name: str) -> Response:
    return _change_adapter(request, user, owner, name, "adapter.rollback", promotion.rollback)
