"""A tenant's data on request: retention, export and hard delete (purge).

Which tables hold a tenant's data is derived from `core.models.Base.metadata`, never
listed by hand, so a table added later is exported and purged without anyone having to
remember this package: the `tenants` row itself, every table with a `tenant_id` column,
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

Modules: `scope` (which tables, blobs and adapter objects are a tenant's), `retention`,
`export` and `purge`.
"""

from __future__ import annotations

from .export import EXPORT_FORMAT, SECRET_COLUMNS, ExportManifest, export_tenant
from .purge import PurgeResult, purge_tenant
from .retention import RETENTION_ACTOR, RetentionResult, apply_retention, retention_cutoff, retention_loop
from .scope import BLOB_PREFIXES, EXCLUDED_TABLES, ScopedTable, tenant_tables

__all__ = [
    "BLOB_PREFIXES",
    "EXCLUDED_TABLES",
    "EXPORT_FORMAT",
    "RETENTION_ACTOR",
    "SECRET_COLUMNS",
    "ExportManifest",
    "PurgeResult",
    "RetentionResult",
    "ScopedTable",
    "apply_retention",
    "export_tenant",
    "purge_tenant",
    "retention_cutoff",
    "retention_loop",
    "tenant_tables",
]
