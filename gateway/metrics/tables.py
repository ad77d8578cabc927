"""What the scrape-time collectors read from the database."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select

from core.models import Job, Tenant
from core.states import OPEN_JOB_STATUSES, TERMINAL_JOB_STATUSES

if TYPE_CHECKING:
    from core.db import Database


def tenant_names(db: Database, ids: set[str]) -> dict[str, str]:
    with db.session() as session:
        rows = session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(ids))).tuples()
        return dict(rows.all())


def open_job_counts(db: Database) -> dict[str, int]:
    # One indexed COUNT ... GROUP BY per scrape (ix_jobs_status_created).
    query = select(Job.status, func.count()).where(Job.status.in_(OPEN_JOB_STATUSES)).group_by(Job.status)
    with db.session() as session:
        return {status: n for status, n in session.execute(query)}


def job_durations(db: Database) -> dict[str, list[float]]:
    """Seconds from start to finish of the finished jobs, by final status."""
    query = select(Job.status, Job.started_at, Job.finished_at).where(
        Job.status.in_(TERMINAL_JOB_STATUSES), Job.started_at.is_not(None), Job.finished_at.is_not(None)
    )
    with db.session() as session:
        out: dict[str, list[float]] = {}
        for status, started, finished in session.execute(query):
            out.setdefault(status, []).append(max(0.0, (finished - started).total_seconds()))
        return out
