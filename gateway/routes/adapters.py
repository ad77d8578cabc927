"""Adapters: a tenant manages its own (`/v1/adapters`), operators any tenant's (`/admin`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import APIRouter, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from adapters import registry
from adapters.registry import AdapterInfo
from core.errors import TailorError
from gateway import tenants
from gateway.deps import AdminDep, CallerDep, ServicesDep
from gateway.protocol import ActivateVersion, AdapterOut, AdapterRegisterPath, AdapterVersionOut
from gateway.services import Services

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
admin_router = APIRouter(prefix="/admin/tenants/{tenant}/adapters", tags=["admin"], dependencies=[AdminDep])


def adapter_out(info: AdapterInfo) -> AdapterOut:
    return AdapterOut(id=info.id, name=info.name, active_version=info.active_version,
                      created_at=info.created_at,
                      versions=[AdapterVersionOut(**{k: getattr(v, k) for k in AdapterVersionOut.model_fields})
                                for v in info.versions])


async def upload(services: Services, tenant_id: str, name: str, archive: UploadFile) -> AdapterOut:
    limit = services.settings.max_upload_bytes
    with tempfile.TemporaryDirectory(prefix="tailor-archive-") as tmp:
        path = Path(tmp) / "upload"
        written = 0
        with path.open("wb") as out:
            while chunk := await archive.read(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise TailorError(413, f"Adapter archive exceeds {limit} bytes.", code="file_too_large")
                out.write(chunk)
        await run_in_threadpool(
            registry.register_archive, services.db, services.store, services.limits, tenant_id=tenant_id,
            name=name, archive=path, base_model_name=services.settings.base_model_name,
            max_upload_bytes=services.settings.max_adapter_bytes)
    services.changed()
    return adapter_out(registry.get_adapter(services.db, tenant_id, name))


def activate(services: Services, tenant_id: str, name: str, version: int) -> AdapterOut:
    info = registry.activate_version(services.db, tenant_id, name, version)
    services.changed()
    return adapter_out(info)


def delete(services: Services, tenant_id: str, name: str) -> dict[str, object]:
    registry.delete_adapter(services.db, tenant_id, name)
    services.changed()
    return {"id": name, "object": "adapter", "deleted": True}


# --- tenant routes ------------------------------------------------------------

@router.get("", response_model=list[AdapterOut], summary="List your adapters and their versions")
def list_own(services: ServicesDep, caller: CallerDep) -> list[AdapterOut]:
    return [adapter_out(a) for a in registry.list_adapters(services.db, caller.tenant_id)]


@router.post("", response_model=AdapterOut, status_code=201,
             summary="Upload a PEFT LoRA adapter (.zip or .tar.gz) as the next version of `name`")
async def upload_own(services: ServicesDep, caller: CallerDep, name: str = Form(...),
                     file: UploadFile = Form(...)) -> AdapterOut:
    return await upload(services, caller.tenant_id, name, file)


@router.get("/{name}", response_model=AdapterOut)
def get_own(name: str, services: ServicesDep, caller: CallerDep) -> AdapterOut:
    return adapter_out(registry.get_adapter(services.db, caller.tenant_id, name))


@router.post("/{name}/activate", response_model=AdapterOut,
             summary="Point `name` at one of its versions (promotion or rollback)")
def activate_own(name: str, body: ActivateVersion, services: ServicesDep, caller: CallerDep) -> AdapterOut:
    return activate(services, caller.tenant_id, name, body.version)


@router.delete("/{name}")
def delete_own(name: str, services: ServicesDep, caller: CallerDep) -> dict[str, object]:
    return delete(services, caller.tenant_id, name)


# --- admin routes -------------------------------------------------------------

@admin_router.get("", response_model=list[AdapterOut])
def admin_list(tenant: str, services: ServicesDep) -> list[AdapterOut]:
    owner = tenants.find_tenant(services.db, tenant)
    return [adapter_out(a) for a in registry.list_adapters(services.db, owner.id)]


@admin_router.post("", response_model=AdapterOut, status_code=201,
                   summary="Register a PEFT adapter directory on the gateway's filesystem")
def admin_register_path(tenant: str, body: AdapterRegisterPath, services: ServicesDep) -> AdapterOut:
    owner = tenants.find_tenant(services.db, tenant)
    source = Path(body.path)
    if not source.is_dir():
        raise TailorError(400, f"{body.path!r} is not a directory.", code="invalid_adapter", param="path")
    registry.register_dir(services.db, services.store, services.limits, tenant_id=owner.id, name=body.name,
                          source_dir=source, base_model_name=services.settings.base_model_name,
                          source="path", activate=body.activate)
    services.changed()
    return adapter_out(registry.get_adapter(services.db, owner.id, body.name))


@admin_router.post("/upload", response_model=AdapterOut, status_code=201)
async def admin_upload(tenant: str, services: ServicesDep, name: str = Form(...),
                       file: UploadFile = Form(...)) -> AdapterOut:
    owner = tenants.find_tenant(services.db, tenant)
    return await upload(services, owner.id, name, file)


@admin_router.post("/{name}/activate", response_model=AdapterOut)
def admin_activate(tenant: str, name: str, body: ActivateVersion, services: ServicesDep) -> AdapterOut:
    return activate(services, tenants.find_tenant(services.db, tenant).id, name, body.version)


@admin_router.delete("/{name}")
def admin_delete(tenant: str, name: str, services: ServicesDep) -> dict[str, object]:
    return delete(services, tenants.find_tenant(services.db, tenant).id, name)
