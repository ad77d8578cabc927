"""Operator API for a tenant's personal data (admin key): privacy settings, export, purge.

- `GET /admin/tenants/{tenant}/privacy`, `PUT` the same: retention period and redaction.
- `GET /admin/tenants/{tenant}/export`: everything of the tenant as a ZIP download.
- `POST /admin/tenants/{tenant}/purge` with `{"confirm": "<tenant name>"}`: hard delete of
  all its data. A POST with a body rather than `DELETE ?purge=true`: an irreversible
  action should need a deliberate body naming the tenant, not one query flag away from
  the ordinary tenant delete.

Every change, export and purge is recorded in the audit log.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse

from core.errors import bad_request, not_found
from core.ids import utcnow
from core.models import Tenant
from gateway import audit, privacy, tenants
from gateway.deps import AdminDep, ServicesDep
from gateway.protocol.privacy import PrivacyIn, PrivacyOut, PurgeIn, PurgeOut
from gateway.services import Services

router = APIRouter(prefix="/admin/tenants/{tenant}", tags=["admin"], dependencies=[AdminDep])


def _values(row: Tenant) -> dict[str, Any]:
    return {"retention_days": row.retention_days, "redact_pii": bool(row.redact_pii)}


def _row(s: Session, tenant_id: str, tenant: str) -> Tenant:
    row = s.get(Tenant, tenant_id)
    if row is None:  # deleted since it was looked up
        raise not_found(f"No tenant {tenant!r}.", code="tenant_not_found")
    return row


@router.get("/privacy", response_model=PrivacyOut, summary="A tenant's retention period and redaction setting")
def get_privacy(tenant: str, services: ServicesDep) -> PrivacyOut:
    owner = tenants.find_tenant(services.db, tenant)
    with services.db.session() as s:
        return PrivacyOut(tenant=owner.name, **_values(_row(s, owner.id, tenant)))


@router.put(
    "/privacy",
    response_model=PrivacyOut,
    summary="Change a tenant's retention period or redaction (redaction applies to what is stored from now on)",
)
def put_privacy(tenant: str, body: PrivacyIn, services: ServicesDep) -> PrivacyOut:
    owner = tenants.find_tenant(services.db, tenant)
    changes = body.model_dump(include=body.model_fields_set)
    if changes.get("redact_pii", False) is None:
        raise bad_request("redact_pii must be true or false.", param="redact_pii")
    with services.db.session() as s:
        row = _row(s, owner.id, tenant)
        before = _values(row)
        for name, value in changes.items():
            setattr(row, name, value)
        after = _values(row)
        # In the same transaction: the setting and its record are stored together or not at all.
        audit.record(
            s,
            actor=audit.ADMIN,
            action="tenant.privacy",
            tenant_id=owner.id,
            target=owner.name,
            before=before,
            after=after,
        )
    return PrivacyOut(tenant=owner.name, **after)


def _write_export(services: Services, tenant_id: str) -> tuple[str, privacy.ExportManifest]:
    fd, path = tempfile.mkstemp(prefix="tailor-export-", suffix=".zip")
    try:
        with os.fdopen(fd, "wb") as out:
            manifest = privacy.export_tenant(services.db, services.blobs, services.store, tenant_id, out)
    except BaseException:
        _remove(path)
        raise
    return path, manifest


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@router.get(
    "/export",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "manifest.json, tables/, blobs/, adapters/"}},
    summary="Everything stored about a tenant, as a ZIP (manifest.json lists the counts)",
)
async def export(tenant: str, services: ServicesDep) -> FileResponse:
    owner = await run_in_threadpool(tenants.find_tenant, services.db, tenant)
    # Built in a temporary file, not in memory: an export holds every file and adapter.
    path, manifest = await run_in_threadpool(_write_export, services, owner.id)
    counts = {"tables": manifest.tables, "blobs": manifest.blobs, "adapter_objects": manifest.adapter_objects}
    await run_in_threadpool(
        lambda: audit.record(
            services.db, actor=audit.ADMIN, action="tenant.export", tenant_id=owner.id, target=owner.name, after=counts
        )
    )
    filename = f"tailor-export-{owner.name}-{utcnow():%Y%m%dT%H%M%SZ}.zip"
    return FileResponse(path, media_type="application/zip", filename=filename, background=BackgroundTask(_remove, path))


@router.post(
    "/purge",
    response_model=PurgeOut,
    summary="Delete all of a tenant's data for good: rows, files, datasets, reports, adapters",
)
async def purge(tenant: str, body: PurgeIn, services: ServicesDep) -> PurgeOut:
    owner = await run_in_threadpool(tenants.find_tenant, services.db, tenant)
    if body.confirm != owner.name:
        raise bad_request(
            f"To purge tenant {owner.name!r}, send its name as confirm (got {body.confirm!r}).",
            code="confirmation_mismatch",
            param="confirm",
        )
    result = await run_in_threadpool(
        lambda: privacy.purge_tenant(
            services.db, services.blobs, services.store, owner.id, actor=audit.ADMIN, target=owner.name
        )
    )
    services.changed()  # its keys and model names stop resolving in this replica at once
    evicted = await services.unload(result.version_ids)
    return PurgeOut(id=owner.id, name=owner.name, evicted=evicted, **result.counts())
