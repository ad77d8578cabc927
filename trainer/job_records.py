"""What a fine-tuning job leaves behind: its events, checkpoints and evaluation.

Events are the job's log as OpenAI lists it (newest first; a training step's metrics under
OpenAI's keys). Checkpoints are the adapter's files at a step, in the blob store and, with
a digest, in the adapter store (then callable as a model: adapters.checkpoints). The
evaluation is the candidate against the current version on held-out data, with the gate's
decision. Reads are tenant-scoped like the job's own (trainer.jobs.owned_job).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import Database
from core.errors import not_found
from core.ids import new_id
from core.models import Evaluation, JobCheckpoint, JobEvent
from core.pages import first_rows, keyset_page
from core.rows import from_row
from trainer.jobs import check_page_limit, owned_job


@dataclass(frozen=True)
class EventInfo:
    id: int
    job_id: str
    level: str  # info | warn | error
    message: str
    data: dict[str, Any] | None
    created_at: datetime

    @property
    def type(self) -> str:
        # A training-progress event carries OpenAI's metric keys; everything else is prose.
        return "metrics" if self.data and "train_loss" in self.data else "message"


@dataclass(frozen=True)
class CheckpointInfo:
    id: str
    job_id: str
    step: int
    metrics: dict[str, Any]
    path: str  # blob-store key prefix holding the adapter files at this step
    created_at: datetime
    digest: str | None = None  # in the adapter store: callable as a model (adapters.checkpoints)


@dataclass(frozen=True)
class EvaluationInfo:
    id: str
    tenant_id: str
    job_id: str | None
    candidate_version_id: str
    baseline_version_id: str | None
    dataset_id: str | None
    candidate_metrics: dict[str, Any]
    baseline_metrics: dict[str, Any]
    decision: str
    reasons: list[str]
    report_key: str | None
    created_at: datetime


def _checkpoint_info(c: JobCheckpoint) -> CheckpointInfo:
    return from_row(CheckpointInfo, c, metrics=dict(c.metrics))


def _evaluation_info(e: Evaluation) -> EvaluationInfo:
    return from_row(
        EvaluationInfo,
        e,
        candidate_metrics=dict(e.candidate_metrics),
        baseline_metrics=dict(e.baseline_metrics),
        reasons=list(e.reasons),
    )


def add_event(
    db: Database, job_id: str, message: str, *, level: str = "info", data: dict[str, Any] | None = None
) -> EventInfo:
    """Append an event. Progress events use OpenAI's metric keys (step, train_loss, ...)."""
    if level not in ("info", "warn", "error"):
        raise ValueError(f"event level must be info, warn or error, not {level!r}")
    with db.session() as s:
        event = JobEvent(job_id=job_id, level=level, message=message, data=data)
        s.add(event)
        s.flush()
        return from_row(EventInfo, event)


def list_events(
    db: Database, tenant_id: str | None, job_id: str, *, after: int | None = None, limit: int = 20
) -> tuple[list[EventInfo], bool]:
    """A job's events, newest first (as OpenAI lists them); `after` is the last id seen."""
    check_page_limit(limit)
    with db.session() as s:
        owned_job(s, tenant_id, job_id)
        query = select(JobEvent).where(JobEvent.job_id == job_id)
        if after is not None:
            query = query.where(JobEvent.id < after)
        page = first_rows(s, query.order_by(JobEvent.id.desc()), limit)
        return [from_row(EventInfo, e) for e in page.items], page.has_more


def step_data(db: Database, job_id: str) -> list[dict[str, Any]]:
    """The data of a job's training-step events (those with a `step`), oldest first: what the
    job's report draws its curves from (the worker's read, not a tenant's: no paging)."""
    with db.session() as s:
        rows = s.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [dict(data) for data in rows if data and "step" in data]


def add_checkpoint(
    db: Database, job_id: str, *, step: int, metrics: dict[str, Any], path: str, digest: str | None = None
) -> CheckpointInfo:
    """Record a checkpoint: its files at `path` in the blob store and, with `digest`, in the
    adapter store (then it is callable as a model: adapters.checkpoints)."""
    with db.session() as s:
        row = JobCheckpoint(id=new_id("ftckpt"), job_id=job_id, step=step, metrics=metrics, path=path, digest=digest)
        s.add(row)
        s.flush()
        return _checkpoint_info(row)


def _checkpoint_of(s: Session, job_id: str, checkpoint_id: str) -> JobCheckpoint | None:
    row = s.get(JobCheckpoint, checkpoint_id)
    return row if row is not None and row.job_id == job_id else None


def get_checkpoint(db: Database, job_id: str, checkpoint_id: str) -> CheckpointInfo:
    with db.session() as s:
        row = _checkpoint_of(s, job_id, checkpoint_id)
        if row is None:
            raise not_found(f"Checkpoint {checkpoint_id!r} of job {job_id} not found.", code="checkpoint_not_found")
        return _checkpoint_info(row)


def list_checkpoints(
    db: Database, tenant_id: str | None, job_id: str, *, after: str | None = None, limit: int = 10
) -> tuple[list[CheckpointInfo], bool]:
    """A job's checkpoints, latest step first; `after` is the last checkpoint id seen."""
    check_page_limit(limit)
    with db.session() as s:
        owned_job(s, tenant_id, job_id)
        page = keyset_page(
            s,
            select(JobCheckpoint).where(JobCheckpoint.job_id == job_id),
            (JobCheckpoint.step, JobCheckpoint.id),
            after=after,
            find=lambda checkpoint_id: _checkpoint_of(s, job_id, checkpoint_id),
            unknown=f"No checkpoint {after!r} of this job to list after.",
            limit=limit,
        )
        return [_checkpoint_info(c) for c in page.items], page.has_more


def record_evaluation(
    db: Database,
    *,
    tenant_id: str,
    job_id: str | None,
    candidate_version_id: str,
    baseline_version_id: str | None,
    dataset_id: str | None,
    candidate_metrics: dict[str, Any],
    baseline_metrics: dict[str, Any],
    decision: str,
    reasons: list[str],
    report_key: str | None,
) -> EvaluationInfo:
    with db.session() as s:
        row = Evaluation(
            id=new_id("eval"),
            tenant_id=tenant_id,
            job_id=job_id,
            candidate_version_id=candidate_version_id,
            baseline_version_id=baseline_version_id,
            dataset_id=dataset_id,
            candidate_metrics=candidate_metrics,
            baseline_metrics=baseline_metrics,
            decision=decision,
            reasons=reasons,
            report_key=report_key,
        )
        s.add(row)
        s.flush()
        return _evaluation_info(row)


def get_evaluation(db: Database, tenant_id: str | None, job_id: str) -> EvaluationInfo:
    """The evaluation a job produced (404 while there is none yet)."""
    with db.session() as s:
        job = owned_job(s, tenant_id, job_id)
        row = s.scalar(
            select(Evaluation).where(Evaluation.job_id == job.id).order_by(Evaluation.created_at.desc()).limit(1)
        )
        if row is None:
            raise not_found(f"Fine-tuning job {job_id} has no evaluation yet.", code="evaluation_not_found")
        return _evaluation_info(row)
