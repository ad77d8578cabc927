"""Running batches from the database: claim with a lease, record lines, end (the gateway's side).

Claiming is an atomic conditional `UPDATE batches SET worker_id = me, lease_expires_at = ...
WHERE id = ? AND <unfinished> AND <nobody's lease is live>`, checking the row count, on
SQLite and PostgreSQL alike: two gateways can never both win a batch. The holder renews the
lease every third of `TAILOR_BATCH_LEASE_S`; every finished line is recorded in the
transaction that also checks that the lease is still the holder's (`BatchLost` otherwise),
so a line is recorded once, by the holder. A gateway that dies stops renewing; once its lease
has run out any gateway claims the batch and runs only the lines not recorded yet (a line
that was in flight when its gateway died runs again: at least once, never recorded twice).

Which batch is next is fair across tenants: the unfinished batch of the tenant with the
fewest batches being run right now, then the oldest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from core.db import Database, lock_row
from core.ids import utcnow
from core.models import UNFINISHED_BATCH_STATES, Batch, BatchLine, Tenant
from gateway.batches.store import TERMINAL, BatchInfo, info
from gateway.batches.tokens import Tokens
from gateway.limits import TenantLimits
from gateway.tenants import Caller

# The column each terminal status stamps.
_ENDED_AT = {
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelled": "cancelled_at",
}


class BatchLost(Exception):
    """The batch is no longer this gateway's (its lease ran out and another took it, or the
    tenant was deleted): stop working on it, record nothing more."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"batch {batch_id} is no longer held by this gateway")
        self.batch_id = batch_id


def _free(now: datetime) -> Any:
    return and_(
        Batch.status.in_(UNFINISHED_BATCH_STATES),
        or_(Batch.worker_id.is_(None), Batch.lease_expires_at.is_(None), Batch.lease_expires_at <= now),
    )


def _fair_order(now: datetime) -> tuple[Any, ...]:
    other = aliased(Batch)
    running = (
        select(func.count(other.id))
        .where(other.tenant_id == Batch.tenant_id, other.worker_id.is_not(None), other.lease_expires_at > now)
        .scalar_subquery()
    )
    return running, Batch.created_at, Batch.id


def claim(
    db: Database, worker_id: str, *, lease_s: float, now: datetime | None = None, batch_id: str | None = None
) -> BatchInfo | None:
    """Take the next unfinished batch nobody holds (or `batch_id`) for `worker_id`; a
    `validating` one becomes `in_progress`. None when there is none to take."""
    now = now or utcnow()
    query = select(Batch.id).where(_free(now))
    if batch_id is not None:
        query = query.where(Batch.id == batch_id)
    with db.session() as s:
        candidates = list(s.scalars(query.order_by(*_fair_order(now)).limit(5)))
    for candidate in candidates:
        taken = take(db, candidate, worker_id, lease_s=lease_s, now=now)
        if taken is not None:
            return taken
    return None  # others were quicker


def take(
    db: Database, batch_id: str, worker_id: str, *, lease_s: float, now: datetime | None = None
) -> BatchInfo | None:
    """Take `batch_id` for `worker_id` if it is unfinished and nobody's lease on it is live
    (whatever the caller read before); None otherwise."""
    now = now or utcnow()
    with db.session() as s:
        won = s.execute(
            update(Batch)
            .where(Batch.id == batch_id, _free(now))
            .values(worker_id=worker_id, lease_expires_at=now + timedelta(seconds=lease_s))
            .execution_options(synchronize_session=False)
        ).rowcount
        if won != 1:
            return None
        # Ours now (the UPDATE holds the row until commit): the rest is plain ORM.
        row = s.get(Batch, batch_id, populate_existing=True)
        assert row is not None
        if row.status == "validating":
            row.status, row.in_progress_at = "in_progress", now
        s.flush()
        return info(row)


def renew(db: Database, batch_id: str, worker_id: str, *, lease_s: float, now: datetime | None = None) -> str:
    """Extend the lease; returns the batch's status (`cancelling` once a cancel was asked).
    Raises BatchLost when the batch is not this gateway's any more."""
    now = now or utcnow()
    with db.session() as s:
        held = s.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.worker_id == worker_id, Batch.status.in_(UNFINISHED_BATCH_STATES))
            .values(lease_expires_at=now + timedelta(seconds=lease_s))
            .execution_options(synchronize_session=False)
        ).rowcount
        if held != 1:
            raise BatchLost(batch_id)
        return str(s.scalar(select(Batch.status).where(Batch.id == batch_id)))


def caller_for(db: Database, batch: BatchInfo) -> Caller:
    """Who the batch's requests run as: its tenant, with the tenant's limits as they are now,
    and the key that created it (for the interaction log)."""
    with db.session() as s:
        tenant = s.get(Tenant, batch.tenant_id)
        if tenant is None:
            raise BatchLost(batch.id)
        return Caller(
            tenant_id=tenant.id,
            tenant_name=tenant.name,
            key_id=batch.api_key_id or "",
            limits=TenantLimits.from_json(tenant.limits),
        )


def redacts(db: Database, tenant_id: str) -> bool:
    """Whether the tenant has its stored data redacted (gateway.redaction)."""
    with db.session() as s:
        return bool(s.scalar(select(Tenant.redact_pii).where(Tenant.id == tenant_id)))


def record(
    db: Database,
    batch_id: str,
    worker_id: str,
    *,
    line: int,
    failed: bool,
    output: dict[str, Any],
    lease_s: float,
    tokens: Tokens = Tokens(),
    now: datetime | None = None,
) -> str:
    """Record a finished line and count it and its `tokens`, if the batch is still this
    gateway's (else BatchLost, nothing recorded); returns the batch's status (`cancelling`
    once a cancel was asked). A line recorded already is left as it was."""
    now = now or utcnow()
    counter = Batch.failed if failed else Batch.completed
    counts = {
        counter: counter + 1,
        Batch.input_tokens: Batch.input_tokens + tokens.input,
        Batch.cached_tokens: Batch.cached_tokens + tokens.cached,
        Batch.output_tokens: Batch.output_tokens + tokens.output,
        Batch.reasoning_tokens: Batch.reasoning_tokens + tokens.reasoning,
        Batch.lease_expires_at: now + timedelta(seconds=lease_s),
    }
    try:
        with db.session() as s:
            held = s.execute(
                update(Batch)
                .where(Batch.id == batch_id, Batch.worker_id == worker_id, Batch.status.in_(UNFINISHED_BATCH_STATES))
                .values(counts)
                .execution_options(synchronize_session=False)
            ).rowcount
            if held != 1:
                raise BatchLost(batch_id)
            s.add(BatchLine(batch_id=batch_id, line=line, failed=failed, output=output))
            s.flush()
            return str(s.scalar(select(Batch.status).where(Batch.id == batch_id)))
    except IntegrityError:
        # Recorded before (the count went back with the rollback): it stays counted once.
        with db.session() as s:
            return str(s.scalar(select(Batch.status).where(Batch.id == batch_id)))


def done_lines(db: Database, batch_id: str) -> set[int]:
    with db.session() as s:
        return set(s.scalars(select(BatchLine.line).where(BatchLine.batch_id == batch_id)))


@dataclass(frozen=True)
class LineResult:
    line: int
    failed: bool
    output: dict[str, Any]


def results(db: Database, batch_id: str) -> list[LineResult]:
    """The recorded lines, in input order."""
    with db.session() as s:
        rows = s.execute(
            select(BatchLine.line, BatchLine.failed, BatchLine.output)
            .where(BatchLine.batch_id == batch_id)
            .order_by(BatchLine.line)
        ).all()
    return [LineResult(line, failed, output) for line, failed, output in rows]


def _held(s: Any, batch_id: str, worker_id: str) -> Batch:
    row = lock_row(s, select(Batch).where(Batch.id == batch_id))
    if row is None or row.worker_id != worker_id or row.status not in UNFINISHED_BATCH_STATES:
        raise BatchLost(batch_id)
    return row


def ending(db: Database, batch_id: str, worker_id: str, *, all_ran: bool, now: datetime | None = None) -> str:
    """How a batch whose dispatching stopped ends: `cancelled` when a cancel was asked,
    `expired` when lines are left (the window closed), else `completed`, after `finalizing`
    now (from then on it can no longer be cancelled)."""
    with db.session() as s:
        row = _held(s, batch_id, worker_id)
        if row.status == "cancelling":
            return "cancelled"
        if not all_ran:
            return "expired"
        if row.status != "finalizing":
            row.status, row.finalizing_at = "finalizing", now or utcnow()
        return "completed"


def finish(
    db: Database,
    batch_id: str,
    worker_id: str,
    status: str,
    *,
    output_file_id: str | None = None,
    error_file_id: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    now: datetime | None = None,
) -> BatchInfo:
    """End a batch this gateway holds in terminal `status`; its recorded lines go (they are in
    its files now). Raises BatchLost when it is not this gateway's."""
    if status not in TERMINAL:
        raise ValueError(f"finish status must be one of {TERMINAL}, not {status!r}")
    with db.session() as s:
        row = _held(s, batch_id, worker_id)
        row.status = status
        setattr(row, _ENDED_AT[status], now or utcnow())
        row.output_file_id, row.error_file_id, row.errors = output_file_id, error_file_id, errors
        row.worker_id = row.lease_expires_at = None
        s.execute(delete(BatchLine).where(BatchLine.batch_id == batch_id))
        s.flush()
        return info(row)


def release(db: Database, batch_id: str, worker_id: str) -> None:
    """Let go of a batch without ending it (the gateway is stopping): any gateway may claim it
    at once instead of waiting for the lease to run out."""
    with db.session() as s:
        s.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.worker_id == worker_id)
            .values(worker_id=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )
