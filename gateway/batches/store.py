"""Batches as a tenant sees them: create, retrieve, list, cancel (the `batches` table).

Every function takes the caller's tenant id; another tenant's batch reads as unknown (404),
as an unknown id does. Running a batch is gateway.batches.lease and .runner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.blobs import BlobStore
from core.db import Database, lock_row
from core.errors import bad_request, not_found
from core.ids import new_id, utcnow
from core.models import Batch
from core.pages import Page, check_limit, tenant_page
from core.rows import from_row, owned
from gateway.batches import input_file
from gateway.batches.tokens import Tokens
from trainer import files

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
MAX_PAGE = 100
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchInfo:
    id: str
    tenant_id: str
    api_key_id: str | None
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    model: str | None
    metadata: dict[str, str] | None
    errors: list[dict[str, Any]] | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    created_at: datetime
    expires_at: datetime
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelling_at: datetime | None
    cancelled_at: datetime | None
    tokens: Tokens


def info(row: Batch) -> BatchInfo:
    return from_row(
        BatchInfo,
        row,
        metadata=row.user_metadata,
        tokens=Tokens(
            input=row.input_tokens or 0,
            cached=row.cached_tokens or 0,
            output=row.output_tokens or 0,
            reasoning=row.reasoning_tokens or 0,
        ),
    )


@dataclass(frozen=True)
class NewBatch:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Mapping[str, str] | None = None


def create(
    db: Database,
    blobs: BlobStore,
    tenant_id: str,
    api_key_id: str | None,
    new: NewBatch,
    *,
    base_model: str,
    max_lines: int,
    now: datetime | None = None,
) -> BatchInfo:
    """A batch of the requests in `new.input_file_id`, `validating` until a gateway takes it.

    Refused with a 400 naming the field, nothing stored: a window other than 24h, an
    endpoint Tailor runs no batches of, a file that is not a batch input file (404 when it
    is not the tenant's), lines for another endpoint, or a model the tenant cannot call
    (any more: adapters may have gone since the upload).
    """
    window = COMPLETION_WINDOWS.get(new.completion_window)
    if window is None:
        raise bad_request(
            f"completion_window must be '24h' (got {new.completion_window!r}).",
            code="invalid_completion_window",
            param="completion_window",
        )
    if new.endpoint not in input_file.ENDPOINTS:
        raise bad_request(
            f"Tailor runs batches of {input_file.supported_endpoints()}; {new.endpoint!r} is not one of them.",
            code="unsupported_endpoint",
            param="endpoint",
        )
    stored = files.get_file(db, tenant_id, new.input_file_id, param="input_file_id")
    if stored.purpose != input_file.PURPOSE:
        raise bad_request(
            f"File {new.input_file_id!r} has purpose {stored.purpose!r}; upload a batch's requests with purpose "
            f"{input_file.PURPOSE!r}.",
            code="invalid_input_file",
            param="input_file_id",
        )
    lines = input_file.read(db, blobs, tenant_id, new.input_file_id, max_lines=max_lines)
    if lines[0].url != new.endpoint:
        raise bad_request(
            f"The requests in {new.input_file_id!r} are for {lines[0].url}, not the batch's endpoint {new.endpoint}.",
            code="mismatched_endpoint",
            param="endpoint",
        )
    input_file.check_models(db, tenant_id, lines, base_model, param="input_file_id")
    models = {line.model for line in lines}
    now = now or utcnow()
    row = Batch(
        id=new_id("batch", "_"),
        tenant_id=tenant_id,
        api_key_id=api_key_id,
        endpoint=new.endpoint,
        input_file_id=new.input_file_id,
        completion_window=new.completion_window,
        status="validating",
        model=models.pop() if len(models) == 1 else None,
        user_metadata=dict(new.metadata) if new.metadata else None,
        total=len(lines),
        completed=0,
        failed=0,
        input_tokens=0,
        cached_tokens=0,
        output_tokens=0,
        reasoning_tokens=0,
        created_at=now,
        expires_at=now + window,
    )
    with db.session() as s:
        s.add(row)
    return info(row)


def _row(s: Session, tenant_id: str, batch_id: str) -> Batch:
    row = owned(s, Batch, batch_id, tenant_id)
    if row is None:
        # The same answer for unknown and foreign batches: ids of other tenants stay secret.
        raise not_found(f"No batch found with id '{batch_id}'.", code="batch_not_found", param="batch_id")
    return row


def get(db: Database, tenant_id: str, batch_id: str) -> BatchInfo:
    with db.session() as s:
        return info(_row(s, tenant_id, batch_id))


BatchPage = Page[BatchInfo]


def list_batches(db: Database, tenant_id: str, *, after: str | None = None, limit: int = 20) -> BatchPage:
    """The tenant's batches, newest first; `after` a batch id of the previous page."""
    check_limit(limit, MAX_PAGE)
    with db.session() as s:
        unknown = f"after {after!r} is not one of your batch ids."
        return tenant_page(s, Batch, tenant_id, after=after, unknown=unknown, limit=limit).map(info)


def cancel(db: Database, tenant_id: str, batch_id: str, now: datetime | None = None) -> BatchInfo:
    """Ask a batch to stop: `cancelling`, until its gateway has let the requests in flight
    finish and written what was done (then `cancelled`). A batch no gateway has taken yet
    is `cancelled` at once. Cancelling a cancelling or cancelled batch changes nothing; one
    that is finalizing or has ended is a 400."""
    now = now or utcnow()
    with db.session() as s:
        row = _row(s, tenant_id, batch_id)
        row = lock_row(s, select(Batch).where(Batch.id == row.id))
        assert row is not None  # the tenant's row, locked: only a tenant purge deletes it
        if row.status in ("cancelling", "cancelled"):
            return info(row)
        if row.status not in ("validating", "in_progress"):
            raise bad_request(
                f"Batch {batch_id} is {row.status}; only a validating or in_progress batch can be cancelled.",
                code="batch_not_cancellable",
                param="batch_id",
            )
        row.cancelling_at = now
        if row.status == "validating":
            # No gateway has it (claiming makes it in_progress, under the same lock): nothing ran.
            row.status, row.cancelled_at = "cancelled", now
        else:
            row.status = "cancelling"
        s.flush()
        return info(row)
