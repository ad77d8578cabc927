"""What is a tenant's: the tables (from the models' metadata), the blobs and the adapter
objects it owns, and the chunked delete retention and purge share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, select, union_all
from sqlalchemy.schema import Column, MetaData

from core.blobs import BlobStore
from core.db import Database
from core.models import Adapter, AdapterVersion, Base, Job, JobCheckpoint, Tenant

# Not tenant data: the audit log must survive a purge (see the package docstring).
EXCLUDED_TABLES = frozenset({"audit_events"})
# Where core.blobs keeps a tenant's objects: "<prefix>/<tenant id>/...".
BLOB_PREFIXES = ("files", "datasets", "reports", "checkpoints")
CHUNK = 1000


@dataclass(frozen=True)
class ScopedTable:
    """A table holding tenant data, and how its rows are tied to a tenant id."""

    table: Table
    column: Column[Any]  # holds the tenant id, or (with `parent`) a key of the parent's rows
    parent: ScopedTable | None = None
    parent_column: Column[Any] | None = None

    @property
    def name(self) -> str:
        return self.table.name

    def where(self, tenant_id: str) -> ColumnElement[bool]:
        if self.parent is None or self.parent_column is None:
            return self.column == tenant_id
        return self.column.in_(select(self.parent_column).where(self.parent.where(tenant_id)))


def tenant_tables(metadata: MetaData = Base.metadata) -> list[ScopedTable]:
    """Every table with tenant data, parents before children."""
    tenants = metadata.tables[Tenant.__tablename__]
    scoped: dict[str, ScopedTable] = {tenants.name: ScopedTable(tenants, tenants.c.id)}
    # sorted_tables lists parents first, so a child's parent is classified before it.
    for table in metadata.sorted_tables:
        if table.name in scoped or table.name in EXCLUDED_TABLES:
            continue
        if "tenant_id" in table.c:
            scoped[table.name] = ScopedTable(table, table.c.tenant_id)
            continue
        # use_alter keys close cycles (adapters.active_version_id); they never define ownership.
        owners = sorted(
            (fk for fk in table.foreign_keys if fk.column.table.name in scoped and not fk.constraint.use_alter),
            key=lambda fk: fk.parent.name,
        )
        if owners:
            fk = owners[0]
            scoped[table.name] = ScopedTable(table, fk.parent, scoped[fk.column.table.name], fk.column)
    return [scoped[t.name] for t in metadata.sorted_tables if t.name in scoped]


def tenant_blob_keys(blobs: BlobStore, tenant_id: str) -> list[str]:
    return [key for prefix in BLOB_PREFIXES for key in blobs.list(f"{prefix}/{tenant_id}")]


def versions_of(tenant_id: str) -> Any:
    """(id, digest) of the tenant's adapter versions and stored job checkpoints: what engines
    know by id, and what the adapter store holds for the tenant."""
    versions = (
        select(AdapterVersion.id, AdapterVersion.digest)
        .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
        .where(Adapter.tenant_id == tenant_id)
    )
    checkpoints = (
        select(JobCheckpoint.id, JobCheckpoint.digest)
        .join(Job, Job.id == JobCheckpoint.job_id)
        .where(Job.tenant_id == tenant_id, JobCheckpoint.digest.is_not(None))
    )
    return union_all(versions, checkpoints)


def delete_chunked(db: Database, pk: Any, where: ColumnElement[bool], chunk: int) -> int:
    """Delete matching rows a chunk per transaction: no long lock on a busy table."""
    table = pk.table
    total = 0
    while True:
        with db.session() as s:
            ids = list(s.scalars(select(pk).where(where).limit(chunk)))
            if not ids:
                return total
            s.execute(delete(table).where(pk.in_(ids)))
        total += len(ids)
