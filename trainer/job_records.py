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

from sqlalchemy import and_, or_, select

from core.db import Database
from core.errors import bad_request, not_found
from core.ids import new_id
from core.models import Evaluation, JobCheckpoint, JobEvent
from trainer.jobs import aware, check_page_limit, owned_job


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


def _event_info(e: JobEvent) -> EventInfo:
    return EventInfo(
        id=e.id, job_id=e.job_id, level=e.level, message=e.message, data=e.data, created_at=aware(e.created_at)
    )  # type: ignore[arg-type]


def _checkpoint_info(c: JobCheckpoint) -> CheckpointInfo:
    return CheckpointInfo(
        id=c.id,
        job_id=c.job_id,
        step=c.step,
        metrics=dict(c.metrics),
        path=c.path,
        created_at=aware(c.created_at),  # type: ignore[arg-type]
        digest=c.digest,
    )


def _evaluation_info(e: Evaluation) -> EvaluationInfo:
    return EvaluationInfo(
        id=e.id,
        tenant_id=e.tenant_id,
        job_id=e.job_id,
        candidate_version_id=e.candidate_version_id,
        baseline_version_id=e.baseline_version_id,
        dataset_id=e.dataset_id,
        candidate_metrics=dict(e.candidate_metrics),
        baseline_metrics=dict(e.baseline_metrics),
        decision=e.decision,
        reasons=list(e.reasons),
        report_key=e.report_key,
        created_at=aware(e.created_at),  # type: ignore[arg-type]
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
        return _event_info(event)


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
        rows = list(s.scalars(query.order_by(JobEvent.id.desc()).limit(limit + 1)))
        return [_event_info(e) for e in rows[:limit]], len(rows) > limit


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


def get_checkpoint(db: Database, job_id: str, checkpoint_id: str) -> CheckpointInfo:
    with db.session() as s:
        row = s.get(JobCheckpoint, checkpoint_id)
        if row is None or row.job_id != job_id:
            raise not_found(f"Checkpoint {checkpoint_id!r} of job {job_id} not found.", code="checkpoint_not_found")
        return _checkpoint_info(row)


def list_checkpoints(
    db: Database, tenant_id: str | None, job_id: str, *, after: str | None = None, limit: int = 10
) -> tuple[list[CheckpointInfo], bool]:
    """A job's checkpoints, latest step first; `after` is the last checkpoint id seen."""
    check_page_limit(limit)
    with db.session() as s:
        owned_job(s, tenant_id, job_id)
        query = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
        if after is not None:
            cursor = s.get(JobCheckpoint, after)
            if cursor is None or cursor.job_id != job_id:
                raise bad_request(f"No checkpoint {after!r} of this job to list after.", param="after")
            same_step = and_(JobCheckpoint.step == cursor.step, JobCheckpoint.id < cursor.id)
            query = query.where(or_(JobCheckpoint.step < cursor.step, same_step))
        rows = list(s.scalars(query.order_by(JobCheckpoint.step.desc(), JobCheckpoint.id.desc()).limit(limit + 1)))
        return [_checkpoint_info(c) for c in rows[:limit]], len(rows) > limit


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
