"""FastAPI dependencies: the running services, the calling tenant, the admin guard."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from core.errors import TailorError
from gateway.services import Services
from gateway.tenants import Caller


# Dependencies are `async def`: FastAPI runs plain `def` dependencies in a thread pool,
# which costs two thread hand-offs on every request before the first token.
async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TailorError(
            401, "You didn't provide an API key. Pass it as 'Authorization: Bearer YOUR_KEY'.", code="missing_api_key"
        )
    return token.strip()


async def get_caller(request: Request, services: ServicesDep) -> Caller:
    caller = await services.authenticate(_bearer(request))
    if caller is None:
        raise TailorError(401, "Incorrect API key provided.", code="invalid_api_key")
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


async def require_admin(request: Request, services: ServicesDep) -> None:
    configured = services.settings.admin_key
    if configured is None:
        raise TailorError(403, "The admin API is disabled: set TAILOR_ADMIN_KEY to enable it.", code="admin_disabled")
    if not hmac.compare_digest(_bearer(request).encode(), configured.get_secret_value().encode()):
        raise TailorError(401, "Incorrect admin key provided.", code="invalid_api_key")


AdminDep = Depends(require_admin)
