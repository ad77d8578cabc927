"""Operator API (admin key): tenants, their keys, and the engines' state.

Every change is recorded in the audit log by the functions in gateway.tenants, in the
change's own transaction; the routes say who acts (the admin key).
"""

from __future__ import annotations

from fastapi import APIRouter

from gateway import audit, tenants
from gateway.deps import AdminDep, ServicesDep
from gateway.protocol.admin import EngineOut, KeyCreate, KeyCreated, KeyOut, TenantCreate, TenantOut

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])


@router.post("/tenants", response_model=TenantOut, status_code=201)
def create_tenant(body: TenantCreate, services: ServicesDep) -> TenantOut:
    created = tenants.create_tenant(services.db, body.name, actor=audit.ADMIN)
    return TenantOut.model_validate(created)


@router.get("/tenants", response_model=list[TenantOut])
def list_tenants(services: ServicesDep) -> list[TenantOut]:
    return [TenantOut.model_validate(t) for t in tenants.list_tenants(services.db)]


@router.get("/tenants/{tenant}", response_model=TenantOut)
def get_tenant(tenant: str, services: ServicesDep) -> TenantOut:
    return TenantOut.model_validate(tenants.find_tenant(services.db, tenant))


@router.delete("/tenants/{tenant}")
def delete_tenant(tenant: str, services: ServicesDep) -> dict[str, object]:
    tenants.delete_tenant(services.db, tenant, actor=audit.ADMIN)
    services.changed()
    return {"id": tenant, "object": "tenant", "deleted": True}


@router.post(
    "/tenants/{tenant}/keys",
    response_model=KeyCreated,
    status_code=201,
    summary="Create an API key; the secret is in this response only",
)
def create_key(tenant: str, body: KeyCreate, services: ServicesDep) -> KeyCreated:
    new = tenants.create_key(services.db, tenant, name=body.name, expires_at=body.expires_at, actor=audit.ADMIN)
    return KeyCreated.of(new)


@router.get("/tenants/{tenant}/keys", response_model=list[KeyOut])
def list_keys(tenant: str, services: ServicesDep) -> list[KeyOut]:
    return [KeyOut.model_validate(k) for k in tenants.list_keys(services.db, tenant)]


@router.post("/keys/{key_id}/revoke", response_model=KeyOut)
def revoke_key(key_id: str, services: ServicesDep) -> KeyOut:
    info = tenants.revoke_key(services.db, key_id, actor=audit.ADMIN)
    services.changed()
    return KeyOut.model_validate(info)


@router.post(
    "/keys/{key_id}/rotate",
    response_model=KeyCreated,
    status_code=201,
    summary="Replace a key: a new secret for the same tenant; the old one ends after grace_seconds",
)
def rotate_key(key_id: str, services: ServicesDep, grace_seconds: int = 0) -> KeyCreated:
    new = tenants.rotate_key(services.db, key_id, grace_seconds=grace_seconds, actor=audit.ADMIN)
    services.changed()
    return KeyCreated.of(new)


@router.get("/engines", response_model=list[EngineOut])
def engines(services: ServicesDep) -> list[EngineOut]:
    return [EngineOut.model_validate(e) for pool in services.pools.values() for e in pool.stats()]
