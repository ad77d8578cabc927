"""The overview (every tenant, or one tenant's own), a tenant's page, and the operator's
actions on tenants and keys: create a tenant, create, rotate and revoke a key."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Form, Request
from starlette.responses import HTMLResponse, Response

from core.errors import TailorError, not_found
from core.ids import utcnow
from gateway import tenants
from gateway.tenants import TenantInfo

from . import queries
from .access import Poster, Tenant, User
from .auth import ConsoleUser
from .pages import console_router, redirect, render, services_of

router = console_router()


def _overview(request: Request, user: ConsoleUser, *, status: int = 200, error: str | None = None) -> HTMLResponse:
    rows = queries.overview(services_of(request), None if user.is_admin else user.tenant_id)
    return render(request, "overview.html", user, status=status, nav="overview", rows=rows, error=error)


@router.get("")
def overview(request: Request, user: User) -> HTMLResponse:
    return _overview(request, user)


@router.post("/tenants")
def create_tenant(request: Request, user: Poster, name: Annotated[str, Form()] = "") -> Response:
    user.require_admin()
    services = services_of(request)
    try:
        created = tenants.create_tenant(services.db, name.strip(), actor=user.actor)
    except TailorError as exc:
        return _overview(request, user, status=exc.status, error=exc.message)
    return redirect(request, f"/tenants/{created.name}?done=tenant.create")


def _tenant_page(
    request: Request, user: ConsoleUser, owner: TenantInfo, *, status: int = 200, error: str | None = None
) -> HTMLResponse:
    detail = queries.tenant_detail(services_of(request), owner)
    return render(request, "tenant.html", user, status=status, nav="tenant", tenant=owner, detail=detail, error=error)


@router.get("/tenants/{tenant}")
def tenant_page(request: Request, user: User, owner: Tenant) -> HTMLResponse:
    return _tenant_page(request, user, owner)


def _owned_key(request: Request, owner: TenantInfo, key_id: str) -> tenants.KeyInfo:
    key = next((k for k in tenants.list_keys(services_of(request).db, owner.id) if k.id == key_id), None)
    if key is None:
        raise not_found(f"No key {key_id!r}.", code="key_not_found")
    return key


def _key_page(
    request: Request, user: ConsoleUser, owner: TenantInfo, new: tenants.NewKey, *, rotated: bool
) -> HTMLResponse:
    heading = "Key rotated" if rotated else "Key created"
    return render(
        request,
        "key_secret.html",
        user,
        nav="tenant",
        tenant=owner,
        heading=heading,
        key=new.info,
        secret=new.secret,
        rotated=rotated,
    )


@router.post("/tenants/{tenant}/keys")
def create_key(
    request: Request,
    user: Poster,
    owner: Tenant,
    name: Annotated[str, Form(max_length=64)] = "",
    expires_days: Annotated[int | None, Form(ge=1, le=3650)] = None,
) -> Response:
    user.require_admin()  # as in the API: only the admin key manages keys
    services = services_of(request)
    expires_at = utcnow() + timedelta(days=expires_days) if expires_days else None
    new = tenants.create_key(services.db, owner.id, name=name.strip() or None, expires_at=expires_at, actor=user.actor)
    return _key_page(request, user, owner, new, rotated=False)


@router.post("/tenants/{tenant}/keys/{key_id}/revoke")
def revoke_key(request: Request, user: Poster, owner: Tenant, key_id: str) -> Response:
    user.require_admin()
    services = services_of(request)
    _owned_key(request, owner, key_id)
    tenants.revoke_key(services.db, key_id, actor=user.actor)
    services.changed()
    return redirect(request, f"/tenants/{owner.name}?done=key.revoke#keys")


@router.post("/tenants/{tenant}/keys/{key_id}/rotate")
def rotate_key(
    request: Request,
    user: Poster,
    owner: Tenant,
    key_id: str,
    grace_seconds: Annotated[int, Form(ge=0, le=tenants.MAX_GRACE_SECONDS)] = 0,
) -> Response:
    user.require_admin()
    services = services_of(request)
    _owned_key(request, owner, key_id)
    try:
        new = tenants.rotate_key(services.db, key_id, grace_seconds=grace_seconds, actor=user.actor)
    except TailorError as exc:
        return _tenant_page(request, user, owner, status=exc.status, error=exc.message)
    services.changed()
    return _key_page(request, user, owner, new, rotated=True)
