"""The Files API's store (OpenAI's Files API): save, read, list and delete files.

It serves every purpose: training files (upload) and batch input and output files
(gateway.batches) are kept the same way. Bytes live in the blob store under
`files/<tenant>/<file id>.jsonl`, written before the row that points at them. Every lookup
is tenant-scoped; another tenant's file reads as unknown (404).
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobs import BlobStore
from core.db import Database
from core.errors import conflict, not_found
from core.ids import new_id
from core.models import UNFINISHED_BATCH_STATES, Batch, Job, StoredFile
from core.pages import Page, check_limit, check_order, tenant_page
from core.quotas import Quotas, Usage, precheck, reserve
from core.rows import from_row, owned
from core.states import OPEN_JOB_STATUSES

MAX_LIST_LIMIT = 10_000


@dataclass(frozen=True)
class FileInfo:
    id: str
    tenant_id: str
    filename: str
    purpose: str
    bytes: int
    kind: str  # a training file's Kind, or "batch" / "batch_output"
    line_count: int
    sha256: str
    created_at: datetime

    @property
    def created_at_unix(self) -> int:
        return int(self.created_at.timestamp())


FilePage = Page[FileInfo]


def _info(row: StoredFile) -> FileInfo:
    return from_row(FileInfo, row)


def storage_key(tenant_id: str, file_id: str) -> str:
    return f"files/{tenant_id}/{file_id}.jsonl"


def _clean_filename(filename: str | None) -> str:
    # Only shown back to the client; the blob key uses the file id, never this name.
    name = posixpath.basename((filename or "").replace("\\", "/")).strip()
    name = "".join(ch for ch in name if ch.isprintable())
    return (name or "upload.jsonl")[:255]


def save_file(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    filename: str | None,
    data: bytes,
    *,
    purpose: str,
    kind: str,
    line_count: int,
    quotas: Quotas | None,
    file_id: str | None = None,
) -> FileInfo:
    """Store already validated bytes as a file of the Files API. With `quotas`, the tenant's
    file count and stored bytes are checked first (429 over them, nothing stored); without,
    the file is kept whatever they say (it is the result of work already done) and counts
    against them from now on. `file_id`: the id to store it under (default: a new one)."""
    adding = Usage(stored_bytes=len(data), files=1)
    if quotas is not None:
        precheck(db, tenant_id, quotas, adding)
    # A given id may already have its row and these same bytes (written by a writer that
    # lost its claim meanwhile): then the blob is that row's, and is not deleted on failure.
    owns_blob = file_id is None
    file_id = file_id or new_id("file")
    key = storage_key(tenant_id, file_id)
    # Blob first: a row always points at complete bytes. A crash in between leaves an
    # unreferenced blob, which is harmless.
    blobs.put_bytes(key, data)
    try:
        with db.session() as s:
            if quotas is not None:
                # Again under the tenant's lock: a concurrent upload may have used the room.
                reserve(s, tenant_id, quotas, adding)
            row = StoredFile(
                id=file_id,
                tenant_id=tenant_id,
                filename=_clean_filename(filename),
                purpose=purpose,
                bytes=len(data),
                kind=kind,
                line_count=line_count,
                storage_key=key,
                sha256=hashlib.sha256(data).hexdigest(),
            )
            s.add(row)
    except Exception:
        if owns_blob:
            blobs.delete(key)
        raise
    return _info(row)


def _row(s: Session, tenant_id: str, file_id: str, param: str) -> StoredFile:
    row = owned(s, StoredFile, file_id, tenant_id)
    if row is None:
        # The same answer for unknown and foreign files: ids of other tenants stay secret.
        raise not_found(f"No such File object: {file_id}", code="file_not_found", param=param)
    return row


def get_file(db: Database, tenant_id: str, file_id: str, *, param: str = "file_id") -> FileInfo:
    with db.session() as s:
        return _info(_row(s, tenant_id, file_id, param))


def list_files(
    db: Database,
    tenant_id: str,
    *,
    purpose: str | None = None,
    limit: int = MAX_LIST_LIMIT,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> FilePage:
    check_limit(limit, MAX_LIST_LIMIT)
    check_order(order)
    with db.session() as s:
        return tenant_page(
            s,
            StoredFile,
            tenant_id,
            where=[StoredFile.purpose == purpose] if purpose is not None else [],
            after=after,
            unknown=f"after {after!r} is not one of your file ids.",
            limit=limit,
            order=order,
        ).map(_info)


def file_content(db: Database, blobs: BlobStore, tenant_id: str, file_id: str) -> bytes:
    with db.session() as s:
        key = _row(s, tenant_id, file_id, "file_id").storage_key
    return blobs.get_bytes(key)


def delete_file(db: Database, blobs: BlobStore, tenant_id: str, file_id: str) -> FileInfo:
    with db.session() as s:
        row = _row(s, tenant_id, file_id, "file_id")
        # A job not yet ended may still read its files; deleting one would fail it later.
        job = s.scalar(
            select(Job.id)
            .where(
                Job.tenant_id == tenant_id,
                Job.status.in_(OPEN_JOB_STATUSES),
                (Job.training_file == file_id) | (Job.validation_file == file_id),
            )
            .limit(1)
        )
        if job is not None:
            raise conflict(
                f"File {file_id} is used by fine-tuning job {job}, which has not finished; "
                "cancel the job or wait for it before deleting the file.",
                code="file_in_use",
                param="file_id",
            )
        batch = s.scalar(
            select(Batch.id)
            .where(
                Batch.tenant_id == tenant_id, Batch.status.in_(UNFINISHED_BATCH_STATES), Batch.input_file_id == file_id
            )
            .limit(1)
        )
        if batch is not None:
            raise conflict(
                f"File {file_id} is the input of batch {batch}, which has not finished; "
                "cancel the batch or wait for it before deleting the file.",
                code="file_in_use",
                param="file_id",
            )
        info, key = _info(row), row.storage_key
        s.delete(row)
    # Row first: once it is gone nobody can reach the blob; a failure here only leaves
    # unreferenced bytes behind.
    blobs.delete(key)
    return info
