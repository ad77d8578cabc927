"""Asking a job to stop or go on: cancel, pause and resume, each recorded in the audit log;
and dropping a job's secrets once nothing can use them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core import audit
from core.db import Database
from core.errors import bad_request, conflict
from core.ids import utcnow
from core.models import Job, JobEvent
from core.quotas import Quotas, Usage, operator_quotas, reserve
from core.states import TERMINAL_JOB_STATUSES, WAITING_JOB_STATUSES, JobStatus
from trainer.jobs.info import JobInfo, ResumePoint, job_info
from trainer.jobs.reading import owned_job


def _cancelled(job: JobInfo) -> dict[str, Any]:
    return {"status": job.status, "cancel_requested": job.cancel_requested}


def _paused(job: JobInfo) -> dict[str, Any]:
    return {"status": job.status, "pause_requested": job.pause_requested}


def _resumed(job: JobInfo) -> dict[str, Any]:
    point = job.resume
    return {"status": job.status, "resume_step": point.step if point and point.checkpoint_id else None}


def _record(s: Any, actor: str, action: str, job: Job, describe: Callable[[JobInfo], dict[str, Any]]) -> JobInfo:
    """The job as it is now, with `action` by `actor` (`describe`d after it) appended to the audit log in `s`."""
    s.flush()
    info = job_info(job)
    audit.record(s, actor=actor, action=action, tenant_id=info.tenant_id, target=info.id, after=describe(info))
    return info


def _note(s: Any, job_id: str, message: str) -> None:
    """An info event in the job's log, written with the change it tells of."""
    s.add(JobEvent(job_id=job_id, level="info", message=message))


def cancel_job(db: Database, tenant_id: str | None, job_id: str, *, actor: str) -> JobInfo:
    """Queued: cancelled at once. Running: flagged; the worker stops before its next step.

    Cancelling a cancelled job is a no-op; a finished one is a 409. Either way that did not
    fail is recorded as `job.cancel` by `actor`.
    """
    with db.session() as s:
        job = owned_job(s, tenant_id, job_id)
        if job.status == JobStatus.CANCELLED:
            return _record(s, actor, "job.cancel", job, _cancelled)
        if job.status in TERMINAL_JOB_STATUSES:
            raise conflict(
                f"Fine-tuning job {job_id} has already {job.status}; it cannot be cancelled.", code="job_finished"
            )
        if job.status == JobStatus.RUNNING:
            if not job.cancel_requested:
                job.cancel_requested = True
                _note(s, job_id, "Cancellation requested; stopping at the next training step")
        else:  # queued / validating_files: no worker holds it yet
            job.status, job.finished_at, job.cancel_requested = JobStatus.CANCELLED, utcnow(), True
            drop_unneeded_secrets(job)
            _note(s, job_id, "Job cancelled")
        return _record(s, actor, "job.cancel", job, _cancelled)


def pause_job(db: Database, tenant_id: str | None, job_id: str, *, actor: str) -> JobInfo:
    """Ask a running job to pause: its training saves a checkpoint at the next step and stops,
    and the job becomes `paused` (see mark_paused). Asking again while it runs is a no-op;
    a job that is not running (or is being cancelled) is a 400. Recorded as `job.pause` by `actor`.
    """
    with db.session() as s:
        job = owned_job(s, tenant_id, job_id)
        if job.status != JobStatus.RUNNING:
            now = "is already paused" if job.status == JobStatus.PAUSED else f"is {job.status.replace('_', ' ')}"
            raise bad_request(
                f"Fine-tuning job {job_id} {now}; only a running job can be paused.", code="job_not_running"
            )
        if job.cancel_requested:
            raise bad_request(
                f"Fine-tuning job {job_id} is being cancelled; it cannot be paused.", code="job_cancel_requested"
            )
        if not job.pause_requested:
            job.pause_requested = True
            _note(s, job_id, "Pause requested; the job saves a checkpoint and pauses at its next training step")
        return _record(s, actor, "job.pause", job, _paused)


def resume_job(
    db: Database, tenant_id: str | None, job_id: str, *, actor: str, quotas: Quotas | None = None
) -> JobInfo:
    """Queue a paused job again; a worker continues it from its resume point. A job that is
    not paused is a 400; resuming takes a place in the tenant's queue (429 when it is full).
    Recorded as `job.resume` by `actor`."""
    with db.session() as s:
        job = owned_job(s, tenant_id, job_id)
        if job.status != JobStatus.PAUSED:
            raise bad_request(
                f"Fine-tuning job {job_id} is {job.status.replace('_', ' ')}, not paused; only a paused job "
                "can be resumed.",
                code="job_not_paused",
            )
        reserve(s, job.tenant_id, operator_quotas(quotas), Usage(queued_jobs=1))
        # The pause ended its attempt cleanly: the tries left for crashes start again.
        job.status, job.pause_requested, job.attempts = JobStatus.QUEUED, False, 0
        job.worker_id, job.heartbeat_at = None, None
        point = ResumePoint.from_json(job.resume_point) if job.resume_point else None
        if point is not None and point.checkpoint_id is not None:
            message = f"Job resumed; queued to continue from step {point.step} of {point.total_steps}"
        else:
            message = "Job resumed; queued to train from the start (it paused before saving a checkpoint)"
        _note(s, job_id, message)
        return _record(s, actor, "job.resume", job, _resumed)


def drop_unneeded_secrets(job: Job | None) -> None:
    """Drop a job's sealed teacher key once nothing can use it: called in the transaction of
    every transition, so the key never outlives its use by a commit.

    The key is used only to ask the teacher, which a job does once, while it waits or runs
    and has no dataset yet; an ended job, or one whose answers are in its snapshot, is done
    with it.
    """
    if job is None or (job.status in (*WAITING_JOB_STATUSES, JobStatus.RUNNING) and job.dataset_id is None):
        return
    teacher = (job.config or {}).get("teacher")
    if isinstance(teacher, dict) and teacher.get("api_key_sealed"):
        job.config = {**(job.config or {}), "teacher": {**teacher, "api_key_sealed": None}}
