"""A tenant's data on request: retention, export and hard delete (purge).

Which tables hold a tenant's data is derived from `core.models.Base.metadata`, never
listed by hand, so a table added later is exported and purged without anyone having to
remember this module: the `tenants` row itself, every table with a `tenant_id` column,
and every table whose foreign key points at one of those (adapter versions, job events
and checkpoints), transitively. `audit_events` is left out on purpose: the record of what
was done to a tenant (its purge included) outlives the tenant, and it holds no content.

Retention (`apply_retention`), for tenants with `retention_days` set, deletes:
- interactions and stored responses (gateway.responses) created before now - retention_days;
- feedback created before that cutoff, and feedback about an interaction being deleted
  (its text is part of that conversation, and without the prompt it is no training example).
Files, datasets, adapters and jobs are not touched: they are artefacts a tenant uploads or
asks for and deletes itself (or through a purge), not a log of its users' conversations.

Export (`export_tenant`) writes one ZIP:
    manifest.json                  format, tenant, time, row counts per table, blob and adapter counts
    tables/<table>.jsonl           one JSON object per row (key hashes and sealed secrets left out)
    blobs/<key>                    every stored object under the tenant's blob prefixes
    adapters/<digest>/<file>       the files of every adapter version and stored job checkpoint the tenant has

Purge (`purge_tenant`) deletes blobs, then adapter-store objects no other tenant's version
or job checkpoint references, then the rows: large leaf tables in chunks, the rest, the tenant row and the
audit event in one transaction. Every step is idempotent, so a purge interrupted anywhere
is finished by running it again; blobs are swept once more after the rows are gone, for
anything written meanwhile. Known limits, as for any garbage collection without a lock:
another tenant registering byte-identical adapter files in the instant between the
"still referenced?" query and the delete loses them, and a version the tenant itself
registers while its purge runs leaves its (unreferenced) files in the store. A remote
store's local caches on other hosts are left to their own cleanup.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import IO, Any

from sqlalchemy import ColumnElement, Table, delete, select, union, union_all, update
from sqlalchemy.orm import Session
from sqlalchemy.schema import Column, MetaData

from adapters.store import AdapterStore
from core.blobs import BlobStore
from core.db import Database
from core.ids import utcnow
from core.models import (
    Adapter,
    AdapterVersion,
    Base,
    Feedback,
    Interaction,
    Job,
    JobCheckpoint,
    StoredResponse,
    Tenant,
)
from gateway import audit

log = logging.getLogger("tailor.privacy")

EXPORT_FORMAT = 1
# Not tenant data: the audit log must survive a purge (see the module docstring).
EXCLUDED_TABLES = frozenset({"audit_events"})
# Never exported: a key's hash is a credential, not the tenant's data.
# A console session id is the hash of its cookie token: a credential, never exported.
SECRET_COLUMNS: dict[str, frozenset[str]] = {"api_keys": frozenset({"key_hash"}), "console_sessions": frozenset({"id"})}
# JSON keys holding sealed third-party secrets (a distillation teacher's API key).
_SEALED_SUFFIX = "_sealed"
# Where core.blobs keeps a tenant's objects: "<prefix>/<tenant id>/...".
BLOB_PREFIXES = ("files", "datasets", "reports", "checkpoints")
RETENTION_ACTOR = "system:retention"
_CHUNK = 1000


# --------------------------------------------------------------------------- which tables


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


# --------------------------------------------------------------------------- retention


@dataclass
class RetentionResult:
    interactions: int = 0
    feedback: int = 0
    responses: int = 0
    by_tenant: dict[str, dict[str, int]] = field(default_factory=dict)


def retention_cutoff(s: Session, tenant_id: str, now: datetime | None = None) -> datetime | None:
    """The oldest creation time the tenant's retention period still keeps (None: no period).

    What the API serves back is hidden from this moment on; `apply_retention` deletes it later.
    """
    days = s.scalar(select(Tenant.retention_days).where(Tenant.id == tenant_id))
    return None if days is None else _utc(now or utcnow()) - timedelta(days=int(days))


def apply_retention(db: Database, now: datetime | None = None, *, chunk: int = _CHUNK) -> RetentionResult:
    """Delete what each tenant's retention period has expired (see the module docstring)."""
    now = _utc(now or utcnow())
    with db.session() as s:
        periods = list(s.execute(select(Tenant.id, Tenant.retention_days).where(Tenant.retention_days.is_not(None))))
    result = RetentionResult()
    for tenant_id, days in periods:
        cutoff = now - timedelta(days=int(days))
        expired = (Interaction.tenant_id == tenant_id) & (Interaction.created_at < cutoff)
        # Feedback first: its condition reads the interactions about to go.
        about_expired = Feedback.interaction_id.in_(select(Interaction.id).where(expired))
        feedback_expired = (Feedback.tenant_id == tenant_id) & ((Feedback.created_at < cutoff) | about_expired)
        feedback = _delete_chunked(db, Feedback.id, feedback_expired, chunk)
        interactions = _delete_chunked(db, Interaction.id, expired, chunk)
        responses_expired = (StoredResponse.tenant_id == tenant_id) & (StoredResponse.created_at < cutoff)
        responses = _delete_chunked(db, StoredResponse.id, responses_expired, chunk)
        if feedback or interactions or responses:
            counts = {"interactions": interactions, "feedback": feedback, "responses": responses}
            result.by_tenant[tenant_id] = counts
            result.interactions += interactions
            result.feedback += feedback
            result.responses += responses
            audit.record(
                db,
                actor=RETENTION_ACTOR,
                action="tenant.retention",
                tenant_id=tenant_id,
                after={**counts, "retention_days": int(days), "cutoff": cutoff.isoformat()},
            )
    return result


def _delete_chunked(db: Database, pk: Any, where: ColumnElement[bool], chunk: int) -> int:
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


async def retention_loop(db: Database, interval_s: float = 3600.0) -> None:
    """Apply retention now and every `interval_s` until cancelled (started by the app's
    lifespan, or once per host by `tailor serve --workers`' parent)."""
    while True:
        try:
            result = await asyncio.to_thread(apply_retention, db, utcnow())
            if result.by_tenant:
                log.info(
                    "retention deleted %d interactions, %d feedback rows and %d stored responses of %d tenants",
                    result.interactions,
                    result.feedback,
                    result.responses,
                    len(result.by_tenant),
                )
        except Exception:  # a failed run is retried next interval; it must not end the loop
            log.exception("retention run failed")
        await asyncio.sleep(interval_s)


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportManifest:
    format: int
    tenant_id: str
    tenant_name: str | None
    exported_at: str
    tables: dict[str, int]
    blobs: int
    adapter_objects: int
    missing_adapter_objects: list[str]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode("utf-8")


def export_tenant(
    db: Database, blobs: BlobStore, store: AdapterStore, tenant_id: str, out: IO[bytes], *, now: datetime | None = None
) -> ExportManifest:
    """Write everything of `tenant_id` as a ZIP to `out` (layout in the module docstring)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with db.session() as s:
            name = s.scalar(select(Tenant.name).where(Tenant.id == tenant_id))
            tables = {t.name: _export_table(zf, s, t, tenant_id) for t in tenant_tables()}
            digests = sorted(set(s.scalars(_digests_of(tenant_id))))
        blob_count = _export_blobs(zf, blobs, tenant_id)
        stored, missing = _export_adapters(zf, store, digests)
        manifest = ExportManifest(
            format=EXPORT_FORMAT,
            tenant_id=tenant_id,
            tenant_name=name,
            exported_at=_utc(now or utcnow()).isoformat(),
            tables=tables,
            blobs=blob_count,
            adapter_objects=stored,
            missing_adapter_objects=missing,
        )
        zf.writestr("manifest.json", manifest.to_json())
    return manifest


def _export_table(zf: zipfile.ZipFile, s: Session, scoped: ScopedTable, tenant_id: str) -> int:
    hidden = SECRET_COLUMNS.get(scoped.name, frozenset())
    columns = [c for c in scoped.table.c if c.name not in hidden]
    pk = list(scoped.table.primary_key.columns)
    query = select(*columns).where(scoped.where(tenant_id)).order_by(*pk).execution_options(yield_per=_CHUNK)
    count = 0
    with zf.open(f"tables/{scoped.name}.jsonl", "w", force_zip64=True) as f:
        for row in s.execute(query).mappings():
            f.write(json.dumps(_without_sealed(dict(row)), default=_json_default, sort_keys=True).encode("utf-8"))
            f.write(b"\n")
            count += 1
    return count


def _export_blobs(zf: zipfile.ZipFile, blobs: BlobStore, tenant_id: str) -> int:
    count = 0
    for key in _tenant_blob_keys(blobs, tenant_id):
        with blobs.fs.open(blobs.path(key), "rb") as src, zf.open(f"blobs/{key}", "w", force_zip64=True) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        count += 1
    return count


def _export_adapters(zf: zipfile.ZipFile, store: AdapterStore, digests: list[str]) -> tuple[int, list[str]]:
    stored, missing = 0, []
    for digest in digests:
        if not store.exists(digest):
            missing.append(digest)
            continue
        directory = store.local_path(digest)  # a remote store materialises it into the cache once
        for path in sorted(directory.iterdir()):
            if path.is_file():
                zf.write(path, f"adapters/{digest}/{path.name}")
        stored += 1
    return stored, missing


def _without_sealed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_sealed(v) for k, v in value.items() if not str(k).endswith(_SEALED_SUFFIX)}
    if isinstance(value, list):
        return [_without_sealed(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


# --------------------------------------------------------------------------- purge


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
    chunk: int = _CHUNK,
) -> PurgeResult:
    """Hard-delete every row, blob and unshared adapter object of `tenant_id`; idempotent.

    Records a `tenant.purge` audit event with the counts in the transaction that deletes
    the tenant row. Engines are not touched here (see `EnginePool.unload`).
    """
    with db.session() as s:
        versions = list(s.execute(_versions_of(tenant_id)))
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


def _versions_of(tenant_id: str) -> Any:
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


def _digests_of(tenant_id: str) -> Any:
    found = _versions_of(tenant_id).subquery()
    return select(found.c.digest).distinct()


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


def _tenant_blob_keys(blobs: BlobStore, tenant_id: str) -> list[str]:
    return [key for prefix in BLOB_PREFIXES for key in blobs.list(f"{prefix}/{tenant_id}")]


def _delete_blobs(blobs: BlobStore, tenant_id: str) -> int:
    count = len(_tenant_blob_keys(blobs, tenant_id))
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
        counts[t.name] = _delete_chunked(db, pk, t.where(tenant_id), chunk)
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


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
