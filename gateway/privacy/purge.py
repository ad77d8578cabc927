"""Purge: hard-delete every row, blob and unshared adapter object of a tenant, idempotently
(order and known limits in the package docstring)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, union, update
from sqlalchemy.orm import Session

from adapters.store import AdapterStore
from core.blobs import BlobStore
from core.db import Database
from core.models import Adapter, AdapterVersion, Job, JobCheckpoint, Tenant
from gateway import audit

from .scope import BLOB_PREFIXES, CHUNK, ScopedTable, delete_chunked, tenant_blob_keys, tenant_tables, versions_of

log = logging.getLogger("tailor.privacy")


@dataclass(frozen=True)
class PurgeResult:
    tenant_id: str
    rows: dict[str, int]
    blobs: int
    adapter_objects: int  # deleted from the adapter store
    shared_adapter_objects: int  # kept: another tenant's version or checkpoint uses the same digest
    version_ids: tuple[str, ...]  # versions' and checkpoints' ids, for evicting them from engines

    def counts(self) -> dict[str, Any]:
        """What the audit log keeps: numbers only, nothing of the tenant's content."""
        return {
            "rows": dict(self.rows),
            "blobs": self.blobs,
            "adapter_objects": self.adapter_objects,
            "shared_adapter_objects": self.shared_adapter_objects,
        }


def purge_tenant(
    db: Database,
    blobs: BlobStore,
    store: AdapterStore,
    tenant_id: str,
    *,
    actor: str = audit.ADMIN,
    target: str | None = None,
    chunk: int = CHUNK,
) -> PurgeResult:
    """Hard-delete every row, blob and unshared adapter object of `tenant_id`; idempotent.

    Records a `tenant.purge` audit event with the counts in the transaction that deletes
    the tenant row. Engines are not touched here (see `EnginePool.unload`).
    """
    with db.session() as s:
        versions = list(s.execute(versions_of(tenant_id)))
    digests = {digest for _id, digest in versions}
    shared = _shared_digests(db, tenant_id, digests)
    blob_count = _delete_blobs(blobs, tenant_id)
    removed = 0
    for digest in sorted(digests - shared):
        if store.exists(digest):
            removed += 1
        store.delete(digest)  # also clears a partial copy or a stale local cache
    rows = _delete_leaf_tables(db, tenant_id, chunk)
    with db.session() as s:
        for name, n in _delete_rows(s, tenant_id).items():
            rows[name] = rows.get(name, 0) + n
        result = PurgeResult(
            tenant_id=tenant_id,
            rows=rows,
            blobs=blob_count,
            adapter_objects=removed,
            shared_adapter_objects=len(shared),
            version_ids=tuple(sorted(v for v, _d in versions)),
        )
        audit.record(s, actor=actor, action="tenant.purge", tenant_id=tenant_id, target=target, after=result.counts())
    late = _delete_blobs(blobs, tenant_id)  # written by a request or job while the rows went
    if late:
        log.warning("purge of %s removed %d objects written during the purge", tenant_id, late)
    return result


def _shared_digests(db: Database, tenant_id: str, digests: set[str]) -> set[str]:
    if not digests:
        return set()
    wanted = sorted(digests)
    versions = (
        select(AdapterVersion.digest)
        .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
        .where(Adapter.tenant_id != tenant_id, AdapterVersion.digest.in_(wanted))
    )
    checkpoints = (
        select(JobCheckpoint.digest)
        .join(Job, Job.id == JobCheckpoint.job_id)
        .where(Job.tenant_id != tenant_id, JobCheckpoint.digest.in_(wanted))
    )
    with db.session() as s:
        return set(s.scalars(union(versions, checkpoints)))


def _delete_blobs(blobs: BlobStore, tenant_id: str) -> int:
    count = len(tenant_blob_keys(blobs, tenant_id))
    for prefix in BLOB_PREFIXES:
        blobs.delete(f"{prefix}/{tenant_id}")  # recursive: the tenant's folder goes whole
    return count


def _leaf_tables() -> list[ScopedTable]:
    """Tables tied directly to a tenant that nothing references, with a one-column key:
    the big ones (interactions, feedback) can go in chunks before the final transaction."""
    tables = tenant_tables()
    referenced = {fk.column.table.name for t in tables for fk in t.table.foreign_keys}
    return [
        t
        for t in tables
        if t.parent is None
        and t.name != Tenant.__tablename__
        and t.name not in referenced
        and len(t.table.primary_key.columns) == 1
    ]


def _delete_leaf_tables(db: Database, tenant_id: str, chunk: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in _leaf_tables():
        (pk,) = t.table.primary_key.columns
        counts[t.name] = delete_chunked(db, pk, t.where(tenant_id), chunk)
    return counts


def _delete_rows(s: Session, tenant_id: str) -> dict[str, int]:
    tables = tenant_tables()
    # Cycle-closing keys first (adapters.active_version_id), or no delete order works.
    for t in tables:
        for fk in t.table.foreign_keys:
            if fk.constraint.use_alter and fk.parent.nullable:
                s.execute(update(t.table).where(t.where(tenant_id)).values({fk.parent.name: None}))
    counts: dict[str, int] = {}
    for t in reversed(tables):  # children before parents
        counts[t.name] = s.execute(delete(t.table).where(t.where(tenant_id))).rowcount or 0
    return counts
