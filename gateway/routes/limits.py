"""Rate limits, token quotas and storage quotas per tenant (see gateway.limits and core.quotas):
set by an operator, read by both."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from core import quotas
from core.quotas import Quotas
from gateway import audit, limits, tenants
from gateway.deps import AdminDep, CallerDep, ServicesDep
from gateway.limits import TenantLimits
from gateway.protocol.limits import LimitsIn, LimitsOut

router = APIRouter(tags=["limits"])
admin_router = APIRouter(prefix="/admin/tenants/{tenant}", tags=["admin"], dependencies=[AdminDep])


def _out(services: ServicesDep, tenant_id: str, tenant_name: str, current: TenantLimits | None) -> LimitsOut:
    values = (current or TenantLimits()).to_json()
    applied, kept = quotas.current(services.db, tenant_id, Quotas.from_settings(services.settings))
    used = {**limits.usage_now(services.db, tenant_id), **kept.to_json()}
    return LimitsOut(tenant=tenant_name, quotas=asdict(applied), used=used, **values)


@router.get("/v1/limits", response_model=LimitsOut, summary="Your rate limits and quotas, and what you used of them")
def get_own_limits(services: ServicesDep, caller: CallerDep) -> LimitsOut:
    return _out(services, caller.tenant_id, caller.tenant_name, tenants.get_limits(services.db, caller.tenant_id))


@admin_router.get("/limits", response_model=LimitsOut, summary="A tenant's rate limits and quotas")
def get_limits(tenant: str, services: ServicesDep) -> LimitsOut:
    owner = tenants.find_tenant(services.db, tenant)
    return _out(services, owner.id, owner.name, tenants.get_limits(services.db, owner.id))


@admin_router.put(
    "/limits",
    response_model=LimitsOut,
    summary="Set a tenant's rate limits and quotas (every replica applies them within TAILOR_AUTH_CACHE_TTL_S)",
)
def put_limits(tenant: str, body: LimitsIn, services: ServicesDep) -> LimitsOut:
    owner = tenants.find_tenant(services.db, tenant)
    _before, after = tenants.set_limits(services.db, owner.id, TenantLimits(**body.model_dump()), actor=audit.ADMIN)
    services.changed()  # this replica applies them at once; the others when their cache expires
    return _out(services, owner.id, owner.name, after)
