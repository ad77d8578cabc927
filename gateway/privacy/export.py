"""Export: everything of one tenant as a ZIP (layout in the package docstring)."""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import asdict, dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters.store import AdapterStore
from core.blobs import BlobStore
from core.db import Database
from core.ids import as_utc, utcnow
from core.models import Tenant

from .scope import CHUNK, ScopedTable, tenant_blob_keys, tenant_tables, versions_of

EXPORT_FORMAT = 1
# Never exported: a key's hash is a credential, not the tenant's data.
# A console session id is the hash of its cookie token: a credential, never exported.
SECRET_COLUMNS: dict[str, frozenset[str]] = {"api_keys": frozenset({"key_hash"}), "console_sessions": frozenset({"id"})}
# JSON keys holding sealed third-party secrets (a distillation teacher's API key).
_SEALED_SUFFIX = "_sealed"


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
    """Write everything of `tenant_id` as a ZIP to `out` (layout in the package docstring)."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with db.session() as s:
            name = s.scalar(select(Tenant.name).where(Tenant.id == tenant_id))
            tables = {t.name: _export_table(zf, s, t, tenant_id) for t in tenant_tables()}
            found = versions_of(tenant_id).subquery()
            digests = sorted(set(s.scalars(select(found.c.digest).distinct())))
        blob_count = _export_blobs(zf, blobs, tenant_id)
        stored, missing = _export_adapters(zf, store, digests)
        manifest = ExportManifest(
            format=EXPORT_FORMAT,
            tenant_id=tenant_id,
            tenant_name=name,
            exported_at=as_utc(now or utcnow()).isoformat(),
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
    query = select(*columns).where(scoped.where(tenant_id)).order_by(*pk).execution_options(yield_per=CHUNK)
    count = 0
    with zf.open(f"tables/{scoped.name}.jsonl", "w", force_zip64=True) as f:
        for row in s.execute(query).mappings():
            f.write(json.dumps(_without_sealed(dict(row)), default=_json_default, sort_keys=True).encode("utf-8"))
            f.write(b"\n")
            count += 1
    return count


def _export_blobs(zf: zipfile.ZipFile, blobs: BlobStore, tenant_id: str) -> int:
    count = 0
    for key in tenant_blob_keys(blobs, tenant_id):
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
        return as_utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
