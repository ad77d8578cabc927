"""FastAPI dependencies: the running services, the calling tenant, the admin guard.

Failed authentications are counted per client address (gateway.auth_guard); an address
over its limit gets 429 before its key is even looked up.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from adapters.engine_source import engine_key_bases
from core.errors import TailorError
from gateway.auth_guard import FailedAuthLimiter
from gateway.services import Services
from gateway.tenants import Caller


# Dependencies are `async def`: FastAPI runs plain `def` dependencies in a thread pool,
# which costs two thread hand-offs on every request before the first token.
async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def client_address(request: Request) -> str:
    """The caller's address: the peer's, or what a trusted proxy forwarded (see gateway.app)."""
    return request.client.host if request.client else "unknown"


def failed_auth_limiter(request: Request) -> FailedAuthLimiter:
    return request.app.state.auth_failures  # type: ignore[no-any-return]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TailorError(
            401, "You didn't provide an API key. Pass it as 'Authorization: Bearer YOUR_KEY'.", code="missing_api_key"
        )
    return token.strip()


async def authenticate_request(request: Request) -> Caller:
    """The tenant of the request's bearer key; 401 for a wrong key, 429 for an address that
    failed too often. Needs only the headers, so it can run before the body is read."""
    limiter = failed_auth_limiter(request)
    address = client_address(request)
    services: Services = request.app.state.services
    secret = _bearer(request)
    # A key known from the cache passes whatever its address did: failures of other callers
    # behind the same address (a NAT, a proxy) must not lock out working keys. Only what
    # would cost a database lookup waits for the address's failures to expire.
    caller = services.cached_caller(secret)
    if caller is not None:
        return caller
    limiter.check(address)
    caller = await services.authenticate(secret)
    if caller is None:
        limiter.failed(address)
        raise TailorError(401, "Incorrect API key provided.", code="invalid_api_key")
    return caller


async def authenticate_admin(request: Request) -> None:
    """The request carries the admin key; same refusals as `authenticate_request`."""
    configured = request.app.state.services.settings.admin_key
    if configured is None:
        raise TailorError(403, "The admin API is disabled: set TAILOR_ADMIN_KEY to enable it.", code="admin_disabled")
    limiter = failed_auth_limiter(request)
    address = client_address(request)
    limiter.check(address)
    if not hmac.compare_digest(_bearer(request).encode(), configured.get_secret_value().encode()):
        limiter.failed(address)
        raise TailorError(401, "Incorrect admin key provided.", code="invalid_api_key")


CallerDep = Annotated[Caller, Depends(authenticate_request)]
AdminDep = Depends(authenticate_admin)


async def authenticate_engine(request: Request) -> frozenset[str]:
    """The bases whose engine sent the request (it carries that engine's key), when engines
    fetch adapters by name (TAILOR_ENGINE_ADAPTER_SOURCE=url); else this route is absent."""
    services: Services = request.app.state.services
    if services.settings.engine_adapter_source != "url":
        raise TailorError(404, "Not Found", code="not_found")
    # The key first: an engine behind the same address as clients that failed (a NAT, a proxy)
    # must still fetch; only a wrong key meets the address's lockout.
    pools = {name: pool.engines for name, pool in services.pools.items()}
    bases = engine_key_bases(pools, f"Bearer {_bearer(request)}")
    if bases:
        return bases
    limiter = failed_auth_limiter(request)
    address = client_address(request)
    limiter.check(address)
    limiter.failed(address)
    raise TailorError(401, "Incorrect engine key provided.", code="invalid_api_key")


EngineBasesDep = Annotated[frozenset[str], Depends(authenticate_engine)]
