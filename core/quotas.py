"""Per-tenant quotas on what a tenant keeps and queues: stored bytes, adapter versions, files
and waiting fine-tuning jobs.

Each quota is the tenant's own value from `tenants.limits` (set with PUT
/admin/tenants/{t}/limits) or else the operator's default (`TAILOR_DEFAULT_MAX_*`). What is
used is counted from the rows themselves, so it is exact and needs no counter to drift:

- stored bytes: `adapter_versions.size_bytes` of the tenant's adapters plus `files.bytes`
  (dataset snapshots, checkpoints and reports record no size, so they are not counted);
- adapter versions: rows in `adapter_versions` of the tenant's adapters;
- files: rows in `files`;
- queued jobs: the tenant's jobs that no worker has started yet.

A write that adds to a quota checks twice: `precheck` before any bytes are written (so a
refused upload stores nothing), and `reserve` in the transaction that inserts the row,
after locking the tenant's row, so two concurrent uploads cannot both slip under the limit.
Over a quota the answer is 429 `insufficient_quota`, naming what is used and the limit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.config import Settings, get_settings
from core.db import Database, lock_row
from core.errors import TailorError
from core.models import Adapter, AdapterVersion, Job, StoredFile, Tenant
from core.states import WAITING_JOB_STATUSES


@dataclass(frozen=True)
class Quotas:
    """The most a tenant may keep (bytes, versions, files) and queue (jobs)."""

    max_stored_bytes: int
    max_adapter_versions: int
    max_files: int
    max_queued_jobs: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Quotas:
        return cls(
            max_stored_bytes=settings.default_max_stored_bytes,
            max_adapter_versions=settings.default_max_adapter_versions,
            max_files=settings.default_max_files,
            max_queued_jobs=settings.default_max_queued_jobs,
        )

    def for_tenant(self, limits: dict[str, Any] | None) -> Quotas:
        """These defaults with the tenant's own values (from `tenants.limits`) in their place."""
        own = {f.name: (limits or {}).get(f.name) for f in fields(self)}
        return Quotas(**{name: value if value is not None else getattr(self, name) for name, value in own.items()})


def operator_quotas(quotas: Quotas | None = None) -> Quotas:
    """`quotas` when a caller passes them, else the defaults of the process's settings."""
    return quotas if quotas is not None else Quotas.from_settings(get_settings())


@dataclass(frozen=True)
class Usage:
    stored_bytes: int = 0
    adapter_versions: int = 0
    files: int = 0
    queued_jobs: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


_FREE_STORAGE = "Delete adapters or files you no longer need, or ask the operator to raise the quota."
# Usage field -> (quota field, what the message calls one unit, how to get room)
_QUOTA_OF = {
    "stored_bytes": ("max_stored_bytes", "bytes stored", _FREE_STORAGE),
    "adapter_versions": ("max_adapter_versions", "adapter versions", _FREE_STORAGE),
    "files": ("max_files", "files", _FREE_STORAGE),
    "queued_jobs": (
        "max_queued_jobs",
        "queued fine-tuning jobs",
        "Wait for queued jobs to start or cancel some, or ask the operator to raise the quota.",
    ),
}


def usage(s: Session, tenant_id: str) -> Usage:
    """What the tenant keeps and queues now, counted from the rows."""
    versions = select(func.count(AdapterVersion.id), func.coalesce(func.sum(AdapterVersion.size_bytes), 0)).join(
        Adapter, Adapter.id == AdapterVersion.adapter_id
    )
    n_versions, version_bytes = s.execute(versions.where(Adapter.tenant_id == tenant_id)).one()
    n_files, file_bytes = s.execute(
        select(func.count(StoredFile.id), func.coalesce(func.sum(StoredFile.bytes), 0)).where(
            StoredFile.tenant_id == tenant_id
        )
    ).one()
    queued = s.scalar(
        select(func.count(Job.id)).where(Job.tenant_id == tenant_id, Job.status.in_(WAITING_JOB_STATUSES))
    )
    return Usage(
        stored_bytes=int(version_bytes) + int(file_bytes),
        adapter_versions=int(n_versions),
        files=int(n_files),
        queued_jobs=int(queued or 0),
    )


def tenant_quotas(s: Session, tenant_id: str, defaults: Quotas) -> Quotas:
    return defaults.for_tenant(s.scalar(select(Tenant.limits).where(Tenant.id == tenant_id)))


def check(s: Session, tenant_id: str, defaults: Quotas, adding: Usage) -> None:
    """Raise 429 `insufficient_quota` if adding `adding` would take the tenant past a quota."""
    quotas, used = tenant_quotas(s, tenant_id, defaults), usage(s, tenant_id)
    for name, more in adding.to_json().items():
        if more <= 0:
            continue
        quota_name, what, advice = _QUOTA_OF[name]
        limit, now = getattr(quotas, quota_name), getattr(used, name)
        if now + more > limit:
            raise _quota_exceeded(f"{limit} {what} ({quota_name})", used=now, adding=more, advice=advice)


def _quota_exceeded(quota: str, *, used: int, adding: int, advice: str) -> TailorError:
    return TailorError(
        429,
        f"You exceeded your quota of {quota}: {used} used, this request adds {adding}. {advice}",
        code="insufficient_quota",
        type="insufficient_quota",
    )


def precheck(db: Database, tenant_id: str, defaults: Quotas, adding: Usage) -> None:
    """`check` in a read-only transaction of its own: the refusal before anything is written."""
    with db.session() as s:
        check(s, tenant_id, defaults, adding)


def reserve(s: Session, tenant_id: str, defaults: Quotas, adding: Usage) -> None:
    """`check` under a lock on the tenant's row, in the caller's transaction: call it right
    before inserting the rows that use the quota, so concurrent writers are counted one
    after the other and never both pass on the same headroom."""
    lock_row(s, select(Tenant).where(Tenant.id == tenant_id))
    check(s, tenant_id, defaults, adding)


def current(db: Database, tenant_id: str, defaults: Quotas) -> tuple[Quotas, Usage]:
    """The quotas that apply to the tenant and what it uses of them (for the limits API)."""
    with db.session() as s:
        return tenant_quotas(s, tenant_id, defaults), usage(s, tenant_id)
