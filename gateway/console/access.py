"""Who is asking, as route dependencies: the signed-in user, the user of a state-changing
request (its form carried the session's CSRF token) and the `{tenant}` of the path."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Form, Request

from core.errors import TailorError, not_found
from gateway import tenants
from gateway.tenants import TenantInfo

from . import auth
from .auth import ConsoleUser
from .pages import services_of


def get_user(request: Request) -> ConsoleUser:
    services = services_of(request)
    return auth.current_user(services.db, services.settings, request.cookies.get(auth.SESSION_COOKIE))


User = Annotated[ConsoleUser, Depends(get_user)]


def get_poster(user: User, csrf: Annotated[str, Form()] = "") -> ConsoleUser:
    """The user of a state-changing request, once its form carried the session's CSRF token."""
    auth.check_csrf(user.csrf, csrf)
    return user


Poster = Annotated[ConsoleUser, Depends(get_poster)]


def get_tenant(tenant: str, request: Request, user: User) -> TenantInfo:
    """The `{tenant}` of the path (name or id), if this user may see it; else 404 as in the API."""
    try:
        found = tenants.find_tenant(services_of(request).db, tenant)
    except TailorError:
        found = None
    if found is None or not user.may_see(found.id):
        raise not_found(f"No tenant {tenant!r}.", code="tenant_not_found")
    return found


Tenant = Annotated[TenantInfo, Depends(get_tenant)]
