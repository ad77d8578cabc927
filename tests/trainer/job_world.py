"""Jobs as the queue's tests set them up: tenants, queued jobs, and a worker gone quiet."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import update

from core.db import Database
from core.ids import new_id, utcnow
from core.models import Job, Tenant
from trainer import job_queue, jobs
from trainer.jobs import JobInfo


def add_tenant(db: Database, name: str, max_queued_jobs: int | None = None) -> str:
    """A new tenant; `max_queued_jobs` None keeps the operator's default."""
    tenant_id = new_id("ten")
    limits = None if max_queued_jobs is None else {"max_queued_jobs": max_queued_jobs}
    with db.session() as s:
        s.add(Tenant(id=tenant_id, name=name, limits=limits))
    return tenant_id


def queue_job(db: Database, tenant_id: str, **kw: object) -> JobInfo:
    """A supervised job on "base" with default hyperparameters, unless `kw` says otherwise."""
    args: dict[str, object] = {"method": "supervised", "model": "base", "hyperparameters": {}}
    args.update(kw)
    return jobs.submit(db, tenant_id, **args, actor="test")  # type: ignore[arg-type]


def backdate_heartbeat(db: Database, job_id: str, seconds: float) -> None:
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def stale_after(db: Database, tenant: str, ask: Callable[..., JobInfo]) -> JobInfo:
    """A job whose worker died after `ask` (cancel_job or pause_job), as requeue_stale left it."""
    job = queue_job(db, tenant)
    job_queue.claim_next(db, "dead")
    ask(db, tenant, job.id, actor="test")
    backdate_heartbeat(db, job.id, 120)
    assert job_queue.requeue_stale(db, stale_after_s=60) == [job.id]
    return jobs.get_job(db, tenant, job.id)
