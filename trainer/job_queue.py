"""The trainer workers' side of the job queue: claim a job, beat, pause, finish, recover.

A worker claims a queued job (`running`), beats its heartbeat at every training step, and
finishes it (`succeeded` | `failed` | `cancelled`), or lets go of it as `paused` with a
`ResumePoint` (trainer.jobs). Asking a job to stop (cancel, pause) is trainer.jobs'; the
run learns of it from `stop_request` at its next step.

Claiming, and why it is safe:

- PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED` picks the next queued job (see below) that
  no other transaction holds, so any number of workers on any number of hosts claim side by side
  without waiting on each other and without ever sharing a job.
- SQLite: an atomic conditional `UPDATE jobs SET status='running' ... WHERE id=? AND
  status='queued'`, checking the row count. SQLite serialises writers, so two claimers can
  never both win a job; but every claim and heartbeat takes the single database write lock,
  so the supported setup is ONE worker per SQLite file. Run several workers on PostgreSQL.

Which job is next is fair across tenants: the queued job of the tenant with the fewest
running jobs, then of the tenant whose last job started longest ago (never: first), so
tenants take turns; within a tenant, the oldest. One tenant queueing a hundred jobs delays
another tenant's job by at most one job per free worker.

A worker that dies stops beating; `requeue_stale` puts its job back in the queue (or fails
it after `max_attempts`; cancels or pauses it when that was asked for), to go on from its
latest stored checkpoint as a resumed paused job does (`ResumePoint`). That can never
leave a half-trained adapter registered: the worker registers a version only after
training finished and its files are complete, and the adapter store commits a version only
once all of its files are written.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from core.db import Database
from core.errors import TailorError
from core.ids import utcnow
from core.models import Job, JobCheckpoint, JobEvent
from core.states import TERMINAL_JOB_STATUSES, JobStatus
from trainer.jobs import JobInfo, ResumePoint, drop_unneeded_secrets, get_job, job_info

log = logging.getLogger("tailor.trainer")

# What a training run is asked to do at its next step (stop_request).
StopRequest = Literal["cancel", "pause"]


class JobLost(TailorError):
    """The worker no longer owns the job (requeued as stale, or finished elsewhere)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(409, f"job {job_id} is no longer held by this worker", code="job_lost")
        self.job_id = job_id


def _fair_order() -> tuple[Any, ...]:
    """ORDER BY terms for queued jobs: the tenant with the fewest running jobs first, then
    the tenant whose last job started longest ago (never started: first), then the oldest."""
    other = aliased(Job)
    running = (
        select(func.count(other.id))
        .where(other.tenant_id == Job.tenant_id, other.status == JobStatus.RUNNING)
        .scalar_subquery()
    )
    last_start = select(func.max(other.started_at)).where(other.tenant_id == Job.tenant_id).scalar_subquery()
    return running, last_start.asc().nulls_first(), Job.created_at, Job.id


def claim_next(db: Database, worker_id: str, *, job_id: str | None = None) -> JobInfo | None:
    """Take the next queued job in fair order (or the queued job `job_id`) for `worker_id`:
    status running, attempts + 1. None when there is none to take."""
    queued = select(Job).where(Job.status == JobStatus.QUEUED)
    if job_id is not None:
        queued = queued.where(Job.id == job_id)
    queued = queued.order_by(*_fair_order())
    if db.engine.dialect.name == "postgresql":
        with db.session() as s:
            job = s.scalar(queued.limit(1).with_for_update(skip_locked=True))
            if job is None:
                return None
            now = utcnow()
            job.status, job.worker_id, job.attempts = JobStatus.RUNNING, worker_id, job.attempts + 1
            job.heartbeat_at, job.started_at = now, job.started_at or now
            s.flush()
            return job_info(job)
    # SQLite (and anything else): read candidates, then win one with a conditional UPDATE.
    for _ in range(5):
        with db.session() as s:
            ids = list(s.scalars(queued.with_only_columns(Job.id).limit(5)))
        if not ids:
            return None
        for candidate in ids:
            now = utcnow()
            with db.session() as s:
                won = s.execute(
                    update(Job)
                    .where(Job.id == candidate, Job.status == JobStatus.QUEUED)
                    .values(
                        status=JobStatus.RUNNING,
                        worker_id=worker_id,
                        attempts=Job.attempts + 1,
                        heartbeat_at=now,
                        started_at=now,
                    )
                    .execution_options(synchronize_session=False)
                ).rowcount
            if won == 1:
                return get_job(db, None, candidate)
    return None


def stop_request(db: Database, job_id: str, worker_id: str) -> StopRequest | None:
    """Refresh the claim; return what the job was asked to do: "cancel" (which wins over a
    pause), "pause", or None to go on.

    Raises JobLost when the job is no longer this worker's (requeued as stale, finished).
    """
    with db.session() as s:
        beat = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        if beat != 1:
            raise JobLost(job_id)
        cancel, pause = s.execute(select(Job.cancel_requested, Job.pause_requested).where(Job.id == job_id)).one()
        return "cancel" if cancel else "pause" if pause else None


def heartbeat(db: Database, job_id: str, worker_id: str) -> bool:
    """Refresh the claim; return whether cancellation was requested (a pause is honoured only
    by a training run: stop_request). Raises JobLost like stop_request."""
    return stop_request(db, job_id, worker_id) == "cancel"


def mark_paused(db: Database, job_id: str, worker_id: str, point: ResumePoint | None) -> JobInfo:
    """The worker lets go of a running job it paused: `paused`, to go on from `point` (None:
    it paused before a checkpoint, so it trains from the start; a resume point of an earlier
    pause stays then). A cancellation asked for meanwhile wins: the job is cancelled instead.
    Raises JobLost when the job is no longer this worker's."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.worker_id != worker_id or job.status != JobStatus.RUNNING:
            raise JobLost(job_id)
        if job.cancel_requested:
            job.status, job.finished_at = JobStatus.CANCELLED, utcnow()
            drop_unneeded_secrets(job)
            s.add(JobEvent(job_id=job_id, level="info", message="Job cancelled while it paused"))
            s.flush()
            return job_info(job)
        job.status, job.pause_requested, job.worker_id, job.heartbeat_at = JobStatus.PAUSED, False, None, None
        if point is not None:
            job.resume_point = point.to_json()
        drop_unneeded_secrets(job)
        if point is not None and point.checkpoint_id is not None:
            message = f"Job paused after step {point.step} of {point.total_steps}; resume continues from its checkpoint"
            data: dict[str, Any] | None = {"step": point.step, "total_steps": point.total_steps}
        else:
            message, data = "Job paused before any checkpoint; resume trains from the start", None
        s.add(JobEvent(job_id=job_id, level="info", message=message, data=data))
        s.flush()
        return job_info(job)


def update_running(
    db: Database,
    job_id: str,
    worker_id: str,
    *,
    dataset_id: str | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> None:
    """Record what the worker decided once it knows the data: the snapshot and concrete knobs.

    Once the snapshot is recorded a distillation job has its teacher's answers, so its
    sealed teacher key is dropped here: a retry loads the snapshot and never asks again.
    """
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if dataset_id is not None:
        values["dataset_id"] = dataset_id
    if hyperparameters is not None:
        values["hyperparameters"] = hyperparameters
    with db.session() as s:
        done = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        if done != 1:
            raise JobLost(job_id)
        drop_unneeded_secrets(s.get(Job, job_id))


def finish_job(
    db: Database,
    job_id: str,
    worker_id: str,
    *,
    status: JobStatus,
    fine_tuned_model: str | None = None,
    result_version_id: str | None = None,
    decision: str | None = None,
    metrics: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    trained_tokens: int | None = None,
) -> JobInfo:
    """Move a running job this worker holds to a terminal status (raises JobLost otherwise)."""
    if status not in TERMINAL_JOB_STATUSES:
        raise ValueError(f"finish_job status must be one of {', '.join(TERMINAL_JOB_STATUSES)}, not {status!r}")
    with db.session() as s:
        done = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
            .values(
                status=status,
                fine_tuned_model=fine_tuned_model,
                result_version_id=result_version_id,
                decision=decision,
                metrics=metrics,
                error=error,
                trained_tokens=trained_tokens,
                finished_at=utcnow(),
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if done != 1:
            raise JobLost(job_id)
        drop_unneeded_secrets(s.get(Job, job_id))
    return get_job(db, None, job_id)


def requeue_stale(db: Database, stale_after_s: float, max_attempts: int = 2) -> list[str]:
    """Running jobs whose worker stopped beating: back to the queue, or failed when they have
    had `max_attempts` tries (a job that keeps killing its worker must not loop forever).
    A job whose cancellation was requested is cancelled instead. Returns the ids touched.
    """
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    with db.session() as s:
        stale = list(
            s.execute(
                select(Job.id, Job.attempts, Job.cancel_requested, Job.pause_requested, Job.worker_id).where(
                    Job.status == JobStatus.RUNNING, Job.heartbeat_at < cutoff
                )
            )
        )
    touched: list[str] = []
    for job_id, attempts, cancel_requested, pause_requested, worker_id in stale:
        message = f"Worker {worker_id} stopped sending heartbeats for over {stale_after_s:g} s"
        if cancel_requested:
            values: dict[str, Any] = {"status": JobStatus.CANCELLED, "finished_at": utcnow()}
            event, level = f"{message}; job cancelled as requested", "warn"
        elif pause_requested:
            values = {"status": JobStatus.PAUSED, "pause_requested": False, "worker_id": None, "heartbeat_at": None}
            event, level = f"{message}; job paused as requested", "warn"
        elif attempts < max_attempts:
            values = {"status": JobStatus.QUEUED, "worker_id": None, "heartbeat_at": None}
            event, level = f"{message}; requeued (attempt {attempts} of {max_attempts})", "warn"
        else:
            error = {
                "code": "worker_lost",
                "param": None,
                "message": f"{message}, on {attempts} attempt(s); giving up.",
            }
            values = {"status": JobStatus.FAILED, "finished_at": utcnow(), "error": error}
            event, level = error["message"], "error"
        with db.session() as s:
            goes_on = values["status"] in (JobStatus.QUEUED, JobStatus.PAUSED)
            point = _resume_point_or_none(s, job_id) if goes_on else None
            if point is not None:
                values["resume_point"] = point.to_json()
                event += f"; the next attempt resumes from the checkpoint at step {point.step} of {point.total_steps}"
            # Conditional on the heartbeat still being old: a worker that came back to life
            # in between keeps its job.
            done = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.heartbeat_at < cutoff)
                .values(**values)
                .execution_options(synchronize_session=False)
            ).rowcount
            if done == 1:
                drop_unneeded_secrets(s.get(Job, job_id))
                s.add(JobEvent(job_id=job_id, level=level, message=event))
                touched.append(job_id)
    return touched


def _resume_point_or_none(s: Session, job_id: str) -> ResumePoint | None:
    """_checkpoint_point, or None when its records cannot be read: one job's odd event must not
    stop the sweep from requeueing every later stale job (that job trains from the start)."""
    try:
        return _checkpoint_point(s, job_id)
    except (KeyError, TypeError, ValueError):
        log.warning("job %s: no resume point from its checkpoints; the next attempt starts over", job_id, exc_info=True)
        return None


def _checkpoint_point(s: Session, job_id: str) -> ResumePoint | None:
    """Where a job whose worker died goes on from: its latest stored checkpoint (the highest
    step; of two at one step, the later), with the training losses its step events recorded up
    to there. The same point a pause leaves, so resuming is the pause's resume (the worker's
    training stage), the same data and hyperparameters included: the job recorded them before
    training. None, so that the next attempt trains from the start as before: no checkpoint
    stored (a selection or merge job keeps none), its steps' events incomplete, or training
    had reached its last step.

    The tokens the dead worker trained are not known (its process reports them only at the
    end): the point keeps only the count of an earlier pause."""
    checkpoint = s.scalars(
        select(JobCheckpoint)
        .where(JobCheckpoint.job_id == job_id, JobCheckpoint.digest.is_not(None))
        .order_by(JobCheckpoint.step.desc(), JobCheckpoint.created_at.desc())
        .limit(1)
    ).first()
    if checkpoint is None:
        return None
    steps: dict[int, dict[str, Any]] = {}
    for data in s.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id).order_by(JobEvent.id)):
        if data and "step" in data and "train_loss" in data:
            steps[int(data["step"])] = data  # a step run again (after a restart): its last run counts
    numbers = range(1, checkpoint.step + 1)
    if not numbers or any("total_steps" not in steps.get(step, {}) for step in numbers):
        return None
    done = [steps[step] for step in numbers]
    total_steps = int(done[-1]["total_steps"])
    if checkpoint.step >= total_steps:
        return None  # it had trained to the end: nothing left to go on with
    earlier = s.scalar(select(Job.resume_point).where(Job.id == job_id))
    return ResumePoint(
        step=checkpoint.step,
        total_steps=total_steps,
        checkpoint_id=checkpoint.id,
        losses=tuple(float(d["train_loss"]) for d in done),
        trained_tokens=ResumePoint.from_json(earlier).trained_tokens if earlier else 0,
    )
