"""Adapters: a tenant manages its own (`/v1/adapters`), operators any tenant's (`/admin`).

Both routers call the same functions below; they differ only in how the tenant is
found (the caller's key, or the `{tenant}` path segment behind the admin key) and in who
the audit log names as the actor. Each change is one call to the registry or promotion
action, which records its audit event in the transaction of the change.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from adapters import promotion, registry, version_deletion
from adapters.registry import AdapterInfo, ValidationLimits
from core.errors import TailorError
from core.quotas import Quotas
from gateway import audit, tenants
from gateway.deps import AdminDep, CallerDep, ServicesDep
from gateway.protocol.adapters import (
    BASE_MODEL_FIELD,
    ActivateVersion,
    AdapterOut,
    AdapterRegisterPath,
    CanaryStart,
    MergeOut,
    MergeStart,
    VersionLineageOut,
)
from gateway.services import Services
from trainer import merge

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])
admin_router = APIRouter(prefix="/admin/tenants/{tenant}/adapters", tags=["admin"], dependencies=[AdminDep])


def own_tenant(caller: CallerDep) -> tuple[str, str]:
    return caller.tenant_id, audit.actor_for_key(caller.key_id)


def admin_tenant(tenant: str, services: ServicesDep) -> tuple[str, str]:
    return tenants.find_tenant(services.db, tenant).id, audit.ADMIN


# (tenant id, who is acting) for promoted_by and the audit log.
AdminTenant = Annotated[tuple[str, str], Depends(admin_tenant)]


def _changed(services: Services, after: AdapterInfo) -> AdapterOut:
    """Answer with `after`, once this replica has forgotten what it cached about the name."""
    services.changed()
    return AdapterOut.model_validate(after)


def _limits_for(services: Services, base_model: str | None) -> ValidationLimits:
    """What an adapter for the named base (default: the first) must be; 400 for a name no base has."""
    return services.limits_for(registry.choose_base(services.settings, base_model).name)


async def upload(
    services: Services, who: tuple[str, str], name: str, archive: UploadFile, base_model: str | None = None
) -> AdapterOut:
    limits = _limits_for(services, base_model)
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
            registry.register_archive,
            services.db,
            services.store,
            limits,
            tenant_id=who[0],
            name=name,
            archive=path,
            base_model_name=services.settings.base_model_name,
            max_upload_bytes=services.settings.max_adapter_bytes,
            actor=who[1],
            action="adapter.upload",
        )
    return _changed(services, await run_in_threadpool(registry.get_adapter, services.db, who[0], name))


def _delete(services: Services, who: tuple[str, str], name: str) -> list[str]:
    deleted = version_deletion.delete_adapter(services.db, services.store, who[0], name, actor=who[1])
    services.changed()
    return [v.id for v in deleted]


async def delete(services: Services, who: tuple[str, str], name: str) -> dict[str, object]:
    version_ids = await run_in_threadpool(_delete, services, who, name)
    await services.unload(version_ids)
    return {"id": name, "object": "adapter", "deleted": True}


def _lineage(services: Services, tenant_id: str, name: str) -> list[VersionLineageOut]:
    return [VersionLineageOut.model_validate(v) for v in promotion.lineage(services.db, tenant_id, name)]


def _merge(services: Services, who: tuple[str, str], name: str, body: MergeStart) -> MergeOut:
    info = merge.request_merge(
        services.db,
        who[0],
        name,
        version=body.version,
        activate=body.activate,
        actor=who[1],
        base_model=services.settings.base_model_name,
        quotas=Quotas.from_settings(services.settings),
        other_bases=services.base_names[1:],
    )
    return MergeOut.model_validate(info)


def _routes(r: APIRouter, tenant_dep: Callable[..., tuple[str, str]]) -> None:
    """The adapter operations, mounted on both routers."""
    who_dep = Depends(tenant_dep)

    @r.get("", response_model=list[AdapterOut], summary="List adapters and their versions")
    def list_adapters(services: ServicesDep, who: tuple[str, str] = who_dep) -> list[AdapterOut]:
        return [AdapterOut.model_validate(a) for a in registry.list_adapters(services.db, who[0])]

    @r.post(
        "",
        response_model=AdapterOut,
        status_code=201,
        summary="Upload a PEFT LoRA adapter or a full model (.zip or .tar.gz) as the next version of `name`",
    )
    async def upload_adapter(
        services: ServicesDep,
        who: tuple[str, str] = who_dep,
        name: str = Form(...),
        file: UploadFile = File(...),
        base_model: str | None = Form(None, description=BASE_MODEL_FIELD),
    ) -> AdapterOut:
        return await upload(services, who, name, file, base_model)

    @r.get("/{name}", response_model=AdapterOut)
    def get_adapter(name: str, services: ServicesDep, who: tuple[str, str] = who_dep) -> AdapterOut:
        return AdapterOut.model_validate(registry.get_adapter(services.db, who[0], name))

    @r.get(
        "/{name}/lineage",
        response_model=list[VersionLineageOut],
        summary="Every version with its state, dataset, job, metrics and promotion history",
    )
    def get_lineage(name: str, services: ServicesDep, who: tuple[str, str] = who_dep) -> list[VersionLineageOut]:
        return _lineage(services, who[0], name)

    @r.post(
        "/{name}/activate",
        response_model=AdapterOut,
        summary="Promote: point `name` at one of its versions (atomic, no downtime)",
    )
    def activate(name: str, body: ActivateVersion, services: ServicesDep, who: tuple[str, str] = who_dep) -> AdapterOut:
        return _changed(services, promotion.promote(services.db, who[0], name, body.version, actor=who[1]))

    @r.post(
        "/{name}/rollback",
        response_model=AdapterOut,
        summary="Serve the version that was active before the current one",
    )
    def rollback(name: str, services: ServicesDep, who: tuple[str, str] = who_dep) -> AdapterOut:
        return _changed(services, promotion.rollback(services.db, who[0], name, actor=who[1]))

    @r.post(
        "/{name}/canary", response_model=AdapterOut, summary="Send a fraction of `name`'s traffic to another version"
    )
    def canary(name: str, body: CanaryStart, services: ServicesDep, who: tuple[str, str] = who_dep) -> AdapterOut:
        after = promotion.start_canary(services.db, who[0], name, body.version, body.fraction, actor=who[1])
        return _changed(services, after)

    @r.delete("/{name}/canary", response_model=AdapterOut, summary="Stop the canary")
    def stop_canary(name: str, services: ServicesDep, who: tuple[str, str] = who_dep) -> AdapterOut:
        return _changed(services, promotion.stop_canary(services.db, who[0], name, actor=who[1]))

    @r.post(
        "/{name}/merge",
        response_model=MergeOut,
        status_code=202,
        summary="Merge an adapter version into the base model's weights, as the next version (a whole model)",
    )
    def merge_adapter(
        name: str, services: ServicesDep, body: MergeStart | None = None, who: tuple[str, str] = who_dep
    ) -> MergeOut:
        return _merge(services, who, name, body or MergeStart())

    @r.get("/{name}/merges/{merge_id}", response_model=MergeOut, summary="A merge's status and the version it made")
    def get_merge(name: str, merge_id: str, services: ServicesDep, who: tuple[str, str] = who_dep) -> MergeOut:
        return MergeOut.model_validate(merge.get_merge(services.db, who[0], name, merge_id))

    @r.delete("/{name}", summary="Delete the adapter name and its versions")
    async def delete_adapter(name: str, services: ServicesDep, who: tuple[str, str] = who_dep) -> dict[str, object]:
        return await delete(services, who, name)


_routes(router, own_tenant)
_routes(admin_router, admin_tenant)


@admin_router.post(
    "/register",
    response_model=AdapterOut,
    status_code=201,
    summary="Register a PEFT adapter or full model directory on the gateway's filesystem",
)
def admin_register_path(body: AdapterRegisterPath, services: ServicesDep, who: AdminTenant) -> AdapterOut:
    limits = _limits_for(services, body.base_model)
    source = Path(body.path)
    if not source.is_dir():
        raise TailorError(400, f"{body.path!r} is not a directory.", code="invalid_adapter", param="path")
    registry.register_dir(
        services.db,
        services.store,
        limits,
        tenant_id=who[0],
        name=body.name,
        source_dir=source,
        base_model_name=services.settings.base_model_name,
        actor=who[1],
        source="path",
        activate=body.activate,
    )
    return _changed(services, registry.get_adapter(services.db, who[0], body.name))
